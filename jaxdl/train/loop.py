"""The step-based training loop: runs jitted steps and hands control to callbacks between them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from jaxdl.parallel import shard_batch
from jaxdl.train.callbacks import Callback


class TrainLoop:
    """Runs ``train_step`` from the state's step to ``total_steps`` over ``iterator``'s batches.

    Callbacks see the loop (``state``, ``step``, ``iterator``, ``last_evaluation``) after every
    step and may ``request_stop``. ``loop_state()`` collects every callback's ``state_dict`` under
    its class name: what a checkpoint stores beside the train state to resume exactly.
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
        self.diverged: int | None = None  # the first step whose loss/gradients were non-finite
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
        state["callbacks"] = {type(cb).__name__: cb.state_dict() for cb in self.callbacks}
        return state

    def load_loop_state(self, state: dict) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            callback.load_state_dict(saved.get(type(callback).__name__, {}))

    def run(self) -> Any:
        """Trains until ``total_steps`` or a stop request; returns the final state."""
        self._run_start = time.perf_counter()
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < self.total_steps and not self.should_stop:
            batch = shard_batch(next(self.iterator), self.batch_sharding)
            self.state, metrics = self.train_step(self.state, batch)
            self.step += 1
            for callback in self.callbacks:
                callback.on_step_end(self, self.step, metrics)
        for callback in self.callbacks:
            callback.on_train_end(self)
        self.train_seconds, self._run_start = self.elapsed(), None
        return self.state
