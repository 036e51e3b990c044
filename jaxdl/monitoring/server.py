"""Drift of a server's recent traffic (``jaxdl serve``'s ``/metrics`` drift gauges).

``DriftMonitor.observe`` runs after each answered request: it appends the request's checked
inputs and predicted classes to a rolling window of the last ``window`` examples (whole requests
are dropped from the front, so the window holds at most ``window + max_batch - 1`` examples) and,
every ``every`` requests, starts the statistics on a background thread (skipped while the
previous one still runs). The request path only appends to a deque: it never waits for the
statistics, and nothing here touches the model (no compile). Embeddings, and so MMD, are left to
``jaxdl drift``: they would need a second model call per request.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxdl.monitoring.reference import DriftReference, input_features, predicted_classes
from jaxdl.monitoring.report import compare_window

DEFAULT_WINDOW = 500
DEFAULT_EVERY = 100
logger = logging.getLogger(__name__)


class DriftMonitor:
    """A bounded rolling window of served inputs and predictions, compared with ``reference``
    every ``every`` requests; ``record(result)`` receives each ``compare_window`` result (the
    server's gauges)."""

    def __init__(
        self,
        reference: DriftReference,
        input_names: Sequence[str],
        record: Callable[[Mapping[str, Any]], None],
        *,
        window: int = DEFAULT_WINDOW,
        every: int = DEFAULT_EVERY,
    ):
        if set(reference.plan) != set(input_names):
            raise ValueError(
                f"the drift reference describes inputs {sorted(reference.plan)}, the model takes "
                f"{sorted(input_names)}"
            )
        if window < 2 or every < 1:
            raise ValueError(f"drift window must be >= 2 and every >= 1, got {window}, {every}")
        self.reference = reference
        self.window = int(window)
        self.every = int(every)
        self._record = record
        self._recent: collections.deque = collections.deque()
        self._held = 0
        self._requests = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Adds one answered request; starts a background update every ``every`` requests."""
        size = len(next(iter(inputs.values())))
        entry = (dict(inputs), predicted_classes(outputs), size)
        with self._lock:
            self._recent.append(entry)
            self._held += size
            while self._held - self._recent[0][2] >= self.window:
                self._held -= self._recent.popleft()[2]
            self._requests += 1
            if self._requests % self.every or (self._worker and self._worker.is_alive()):
                return
            self._worker = threading.Thread(target=self._update, name="jaxdl-drift", daemon=True)
            self._worker.start()

    def update(self) -> dict[str, Any] | None:
        """Compares the current window with the reference (None below 2 examples), records and
        returns the result."""
        with self._lock:
            recent = list(self._recent)
        if sum(size for *_, size in recent) < 2:
            return None
        inputs = {
            name: np.concatenate([entry[0][name] for entry in recent])[-self.window :]
            for name in self.reference.plan
        }
        predictions = None
        if all(entry[1] is not None for entry in recent):
            predictions = np.concatenate([entry[1] for entry in recent])[-self.window :]
        result = compare_window(
            self.reference, input_features(self.reference.plan, inputs), predictions
        )
        self._record(result)
        self.last = result
        return result

    def _update(self) -> None:
        try:
            self.update()
        except Exception:  # a monitoring bug must not take the server down
            logger.exception("drift statistics failed")

    def wait(self, timeout: float | None = None) -> None:
        """Waits for a background update in progress (tests, shutdown)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)


def server_monitor(
    reference: DriftReference | None,
    input_names: Sequence[str],
    add_gauges: Callable[[bool], Any],
    *,
    window: int = DEFAULT_WINDOW,
    every: int = DEFAULT_EVERY,
) -> DriftMonitor | None:
    """A server's monitor recording into the gauges ``add_gauges(predictions)`` registers
    (``ServingMetrics.add_drift_gauges``); None without a reference or with ``every=0``."""
    if reference is None or every <= 0:
        return None
    gauges = add_gauges(reference.predictions is not None)
    return DriftMonitor(reference, input_names, gauges.record, window=window, every=every)
