"""SIGTERM and SIGINT become a request to stop at the next step boundary, save and exit.

TPU pods and SLURM preempt with SIGTERM; Ctrl-C sends SIGINT. Either is recorded by the handler and
acted on by the loop (``InterruptCallback``) after the step in flight, so the checkpoint holds a
consistent state; a second Ctrl-C exits at once. With several processes, SIGTERM is left to JAX's
preemption notifier and every process stops at the step ``reached_preemption_sync_point`` agrees on.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils


class InterruptHandler:
    """Context manager installing the handlers; ``requested(step)`` names the signal, if any."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _signals(self) -> list[int]:
        if jax.process_count() > 1:
            return [signal.SIGINT]  # SIGTERM: JAX's preemption sync point
        return [signal.SIGTERM, signal.SIGINT]

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signal_name is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals():
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, step: int) -> str | None:
        """The signal that asks this run to stop after ``step``, or None."""
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            return "SIGTERM"
        return self.signal_name
