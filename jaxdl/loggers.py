"""Metric writers behind one interface: JSON lines, TensorBoard and Weights & Biases.

Only process 0 writes (``make_writers`` returns no writers elsewhere), so multi-host runs log once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np


class MetricWriter(Protocol):
    def write(self, record: Mapping[str, Any]) -> None:
        """Writes one record: ``step`` and ``split`` plus scalar metrics."""

    def close(self) -> None: ...


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (Python, NumPy or 0-d JAX scalars) as floats."""
    scalars = {}
    for key, value in record.items():
        if isinstance(value, bool | str) or value is None or np.ndim(value) != 0:
            continue
        try:
            scalars[key] = float(value)
        except (TypeError, ValueError):
            continue
    return scalars


class JsonlWriter:
    """Appends one JSON object per record to ``metrics.jsonl`` (resumed runs keep appending)."""

    def __init__(self, path: str):
        self._file = open(path, "a")  # noqa: SIM115 - held open for the run, closed in close()

    def write(self, record: Mapping[str, Any]) -> None:
        clean = dict(record) | _scalars(record)
        clean = {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in clean.items()
        }
        # Keep integer fields (step, epoch) integral.
        clean |= {k: int(v) for k, v in record.items() if isinstance(v, int | np.integer)}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """Scalars as TensorBoard events in ``<workdir>/tensorboard`` (tensorboardX: no TF needed)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir)

    def write(self, record: Mapping[str, Any]) -> None:
        split = record.get("split", "train")
        step = int(record.get("step", 0))
        for key, value in _scalars(record).items():
            if key not in ("step", "epoch"):
                self._writer.add_scalar(f"{split}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """Logs to Weights & Biases; ``mode`` 'offline' and 'disabled' need no network."""

    def __init__(self, config: Mapping, *, workdir: str, run_config: dict):
        import wandb

        self._run = wandb.init(
            project=config.get("project", "jaxdl"),
            entity=config.get("entity") or None,
            name=config.get("name") or None,
            mode=config.get("mode", "offline"),
            dir=workdir,
            config=run_config,
            resume="allow",
            id=config.get("run_id") or None,
        )

    def write(self, record: Mapping[str, Any]) -> None:
        split = record.get("split", "train")
        values = {f"{split}/{k}": v for k, v in _scalars(record).items() if k != "step"}
        self._run.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self._run.finish()


class MultiWriter:
    """Fans one record out to several writers."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write(self, record: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write(record)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def make_writers(logging_config: Mapping, workdir: str, run_config: dict) -> MultiWriter:
    """Writers named by ``config.logging`` (``tensorboard``, ``wandb.mode``); process 0 only."""
    wandb_config = logging_config.get("wandb", {}) or {}
    mode = wandb_config.get("mode", "disabled")
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logging.wandb.mode must be online, offline or disabled, got {mode!r}")
    if jax.process_index() != 0:
        return MultiWriter([])
    writers: list[MetricWriter] = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
    if logging_config.get("tensorboard", True):
        writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
    if mode != "disabled":
        writers.append(WandbWriter(wandb_config, workdir=workdir, run_config=run_config))
    return MultiWriter(writers)
