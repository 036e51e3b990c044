"""The step-based training loop: runs jitted steps and hands control to callbacks between them."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jaxdl.errors import ConfigError
from jaxdl.parallel import shard_batch
from jaxdl.train.callbacks import Callback

NONFINITE_MODES = ("stop", "skip", "rollback")


@dataclasses.dataclass(frozen=True)
class NonfinitePolicy:
    """What a non-finite loss or gradient does (``train.on_nonfinite`` and its limits).

    ``stop``: stop at once, keeping the last finite checkpoint. ``skip``: the step's update is
    dropped on device (``make_train_step(skip_nonfinite=True)``); stop after ``max_skips`` in
    a row. ``rollback``: restore the last finite checkpoint, multiply the learning rate by
    ``rollback_lr_factor`` and go on; stop after ``max_rollbacks`` rollbacks.
    """

    mode: str = "stop"
    max_skips: int = 10
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3

    @classmethod
    def from_config(cls, train: Mapping[str, Any]) -> NonfinitePolicy:
        """The policy of a ``train`` config section; a value that cannot work is a ConfigError."""
        defaults = cls()
        mode = train.get("on_nonfinite") or defaults.mode
        if mode not in NONFINITE_MODES:
            raise ConfigError(
                f"train.on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {mode!r}"
            )
        policy = cls(
            mode=mode,
            max_skips=_get(train, "max_nonfinite_skips", defaults.max_skips),
            rollback_lr_factor=float(
                _get(train, "rollback_lr_factor", defaults.rollback_lr_factor)
            ),
            max_rollbacks=_get(train, "max_rollbacks", defaults.max_rollbacks),
        )
        if isinstance(policy.max_skips, bool) or not isinstance(policy.max_skips, int):
            raise ConfigError(f"train.max_nonfinite_skips must be an int, got {policy.max_skips!r}")
        if policy.max_skips < 1:
            raise ConfigError(f"train.max_nonfinite_skips must be >= 1, got {policy.max_skips}")
        factor = policy.rollback_lr_factor
        if not (math.isfinite(factor) and 0.0 < factor < 1.0):
            raise ConfigError(f"train.rollback_lr_factor must be in (0, 1), got {factor}")
        if isinstance(policy.max_rollbacks, bool) or not isinstance(policy.max_rollbacks, int):
            raise ConfigError(f"train.max_rollbacks must be an int, got {policy.max_rollbacks!r}")
        if policy.max_rollbacks < 0:
            raise ConfigError(f"train.max_rollbacks must be >= 0, got {policy.max_rollbacks}")
        return policy

    @property
    def consecutive_limit(self) -> int:
        """Non-finite steps in a row that end the run (or trigger a rollback)."""
        return self.max_skips if self.mode == "skip" else 1


def _get(section: Mapping[str, Any], key: str, default: Any) -> Any:
    """``section[key]``, or ``default`` where it is absent or an unset placeholder."""
    value = section.get(key)
    return default if value is None else value


class TrainLoop:
    """Runs ``train_step`` from the state's step to ``total_steps`` over ``iterator``'s batches.

    Callbacks see the loop (``state``, ``step``, ``iterator``, ``last_evaluation``) after every
    step and may ``request_stop``. ``loop_state()`` collects every callback's ``state_dict`` under
    its class name: what a checkpoint stores beside the train state to resume exactly.

    ``lr_scale`` multiplies the learning rate (lowered by rollbacks, counted in ``rollbacks``);
    both are loop state, so they survive a kill and resume.
    """

    def __init__(
        self,
        *,
        state: Any,
        train_step: Any,
        iterator: Iterator,
        batch_sharding: Any,
        total_steps: int,
        steps_per_epoch: int,
        callbacks: Sequence[Callback],
        extra_state: dict | None = None,
    ):
        self.state, self.train_step, self.iterator = state, train_step, iterator
        self.batch_sharding, self.total_steps = batch_sharding, int(total_steps)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.callbacks = list(callbacks)
        self.extra_state = dict(extra_state or {})
        self.step = int(state.step)
        self.last_evaluation: tuple[int, dict] | None = None
        self.should_stop = False
        self.stop_reason: str | None = None
        self.interrupted: str | None = None  # the signal that stopped the run
        self.diverged: int | None = None  # the step whose non-finite loss/gradients stopped it
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.train_seconds = float(self.extra_state.pop("train_seconds", 0.0))
        self._run_start: float | None = None

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional between epoch boundaries)."""
        return round(step / self.steps_per_epoch, 4)

    def request_stop(self, reason: str) -> None:
        self.should_stop, self.stop_reason = True, reason

    def elapsed(self) -> float:
        """Seconds spent training in this run and the runs it resumed (saved in checkpoints)."""
        running = time.perf_counter() - self._run_start if self._run_start is not None else 0.0
        return self.train_seconds + running

    def loop_state(self) -> dict:
        state = {"step": self.step, **self.extra_state, "train_seconds": self.elapsed()}
        state |= {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks}
        state["callbacks"] = {type(cb).__name__: cb.state_dict() for cb in self.callbacks}
        return state

    def load_loop_state(self, state: dict) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            callback.load_state_dict(saved.get(type(callback).__name__, {}))

    def restarted(self, state: Any, callbacks: Sequence[Callback], loop_state: dict) -> TrainLoop:
        """A loop over the same steps and data iterator from a restored ``state`` and its
        ``loop_state`` (a rollback): new callbacks, the training time spent so far kept."""
        loop = TrainLoop(
            state=state,
            train_step=self.train_step,
            iterator=self.iterator,
            batch_sharding=self.batch_sharding,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=callbacks,
            extra_state=self.extra_state,
        )
        loop.load_loop_state(loop_state)
        loop.train_seconds = self.elapsed()
        return loop

    def run(self) -> Any:
        """Trains until ``total_steps`` or a stop request; returns the final state."""
        self._run_start = time.perf_counter()
        # The scale is passed only when set, so steps that take none (stand-ins) still work.
        train_step = self.train_step
        if self.lr_scale != 1.0:
            train_step = functools.partial(self.train_step, lr_scale=self.lr_scale)
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < self.total_steps and not self.should_stop:
            batch = shard_batch(next(self.iterator), self.batch_sharding)
            self.state, metrics = train_step(self.state, batch)
            self.step += 1
            for callback in self.callbacks:
                callback.on_step_end(self, self.step, metrics)
        for callback in self.callbacks:
            callback.on_train_end(self)
        self.train_seconds, self._run_start = self.elapsed(), None
        return self.state
