"""Loop callbacks that hold state across epochs (and across a resume, via ``state_dict``)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    """Tracks a monitored metric; says when it improved and when to stop.

    ``patience=None`` never stops but still tracks the best epoch (the trainer uses that to keep
    the best checkpoint). An improvement must beat the best by more than ``min_delta``.
    """

    monitor: str = "val_accuracy"
    mode: str = "max"
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"early_stopping.mode must be 'min' or 'max', got {self.mode!r}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"early_stopping.patience must be >= 0, got {self.patience}")

    def update(self, epoch: int, metrics: dict[str, float]) -> tuple[bool, bool]:
        """Feeds one epoch's metrics; returns ``(improved, should_stop)``."""
        if self.monitor not in metrics:
            raise ValueError(
                f"early_stopping.monitor {self.monitor!r} not among metrics {sorted(metrics)}"
            )
        value = float(metrics[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        improved = math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.epochs_without_improvement = value, epoch, 0
        else:
            self.epochs_without_improvement += 1
        stop = self.patience is not None and self.epochs_without_improvement > self.patience
        return improved, stop

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.epochs_without_improvement = int(state.get("epochs_without_improvement", 0))
