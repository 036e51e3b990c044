"""Loop callbacks: evaluation, early stopping, checkpointing, logging and profiling.

The loop (``jaxdl.train.loop.TrainLoop``) runs steps; everything that happens *between* steps is a
callback with three hooks (``on_train_start``, ``on_step_end``, ``on_train_end``) and, when it holds
state that must survive a resume, ``state_dict``/``load_state_dict`` (saved in every checkpoint).
Callbacks run in list order at each step, so an evaluation is seen by early stopping, and both by
the checkpoint saved at the same step. Cadences are in steps; ``every(step, n)`` is the rule.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdl.errors import ConfigError

if TYPE_CHECKING:
    from jaxdl.train.loop import TrainLoop


def every(step: int, interval: int | None) -> bool:
    """True at multiples of a positive ``interval``; never for None/0."""
    return bool(interval) and step % int(interval) == 0


class Callback:
    """Base class: no-op hooks and no state."""

    def on_train_start(self, loop: TrainLoop) -> None:
        del loop

    def on_step_end(self, loop: TrainLoop, step: int, metrics: Mapping[str, jax.Array]) -> None:
        del loop, step, metrics

    def on_train_end(self, loop: TrainLoop) -> None:
        del loop

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


# Every field of the ``early_stopping`` config section (``restore_best`` is the trainer's).
EARLY_STOPPING_FIELDS = frozenset(
    [
        "monitor",
        "mode",
        "patience",
        "min_delta",
        "start_from_epoch",
        "start_from_step",
        "restore_best",
    ]
)


def _non_negative_int(field: str, value: Any) -> int:
    """An early_stopping field that must be an int >= 0 (a one-line ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"early_stopping.{field} must be an int >= 0, got {value!r}")
    return value


@dataclasses.dataclass
class EarlyStopping:
    """Tracks a monitored metric over evaluations; says when it improved and when to stop.

    Keras' and Lightning's meaning: ``patience=p`` stops at the p-th consecutive evaluation without
    improvement (``p=0`` acts as 1, as there); ``patience=None`` never stops but still tracks the
    best evaluation (the trainer keeps the best checkpoint from it). An improvement must beat the
    best by more than ``min_delta``. An evaluation is what the step-based loop runs every
    ``eval_every_steps`` (once per epoch by default). ``start_from_step=S > 0`` makes the first S
    steps a warm-up: evaluations at steps <= S are ignored entirely (no best, no count), as Keras
    ignores the epochs before ``start_from_epoch``; ``start_from_epoch=N`` is ``S = N * steps per
    epoch``.
    """

    monitor: str = "val_accuracy"
    mode: str = "max"
    patience: int | None = None
    min_delta: float = 0.0
    start_from_step: int = 0
    best: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ConfigError(f"early_stopping.mode must be 'min' or 'max', got {self.mode!r}")
        if self.patience is not None:
            _non_negative_int("patience", self.patience)
        _non_negative_int("start_from_step", self.start_from_step)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], *, monitor: str, mode: str, steps_per_epoch: int
    ) -> EarlyStopping:
        """The early stopping an ``early_stopping`` config section describes; ``monitor`` and
        ``mode`` are the task's defaults for fields left unset. ``start_from_epoch`` (Keras' name)
        or ``start_from_step``, not both, delays monitoring; epochs count ``steps_per_epoch``."""
        unknown = sorted(set(section.keys()) - EARLY_STOPPING_FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown early_stopping field(s) {unknown}; valid: {sorted(EARLY_STOPPING_FIELDS)}"
            )
        epochs = _non_negative_int("start_from_epoch", section.get("start_from_epoch") or 0)
        steps = _non_negative_int("start_from_step", section.get("start_from_step") or 0)
        if epochs and steps:
            raise ConfigError("set early_stopping.start_from_epoch or start_from_step, not both")
        min_delta = section.get("min_delta", 0.0)
        if isinstance(min_delta, bool) or not isinstance(min_delta, int | float):
            raise ConfigError(f"early_stopping.min_delta must be a number, got {min_delta!r}")
        return cls(
            monitor=section.get("monitor") or monitor,
            mode=section.get("mode") or mode,
            patience=section.get("patience"),
            min_delta=float(min_delta),
            start_from_step=steps or epochs * steps_per_epoch,
        )

    def update(self, step: int, metrics: Mapping[str, float]) -> tuple[bool, bool]:
        """Feeds one evaluation's metrics taken at ``step``; returns ``(improved, should_stop)``."""
        if self.monitor not in metrics:
            raise ValueError(
                f"early_stopping.monitor {self.monitor!r} not among metrics {sorted(metrics)}"
            )
        if self.start_from_step and step <= self.start_from_step:
            return False, False
        value = float(metrics[self.monitor])
        sign = 1.0 if self.mode == "max" else -1.0
        improved = math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        )
        if improved:
            self.best, self.best_step, self.evaluations_without_improvement = value, step, 0
        else:
            self.evaluations_without_improvement += 1
        stop = (
            not improved
            and self.patience is not None
            and self.evaluations_without_improvement >= self.patience
        )
        return improved, stop

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "evaluations_without_improvement": self.evaluations_without_improvement,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.evaluations_without_improvement = int(state.get("evaluations_without_improvement", 0))


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalar entries of a task's metrics (reports and matrices left out)."""
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _means(values: list[Mapping[str, Any]]) -> dict[str, float]:
    """Per-key means of a list of scalar-metric dicts (fetched from device in one go)."""
    if not values:
        return {}
    host = jax.device_get(values)
    return {key: float(np.mean([v[key] for v in host])) for key in host[0]}


class TrainLogger(Callback):
    """Windows of ``every_steps`` steps (cut short at the end of each evaluation period): mean
    train metrics, learning rate and throughput to the writers, and a progress bar (one per
    evaluation period) on the console.

    Fetching metrics synchronises with the device, so it happens once per logging window.
    """

    def __init__(
        self,
        writer: Any,
        *,
        every_steps: int,
        schedule: Callable[[int], Any],
        units_per_step: int,
        unit: str,
        period_steps: int,
        quiet: bool,
    ):
        self.writer, self.every_steps, self.schedule = writer, max(1, int(every_steps)), schedule
        self.units_per_step, self.unit = units_per_step, unit
        self.period_steps, self.quiet = period_steps, quiet
        self._pending: list[Mapping[str, jax.Array]] = []
        self._bar: tqdm | None = None
        # Throughput is timed from the end of the first step of a window, so evaluation and
        # checkpoint pauses between windows never count: None = start at the next step.
        self._window_start: float | None = None
        self._timed_steps = 0

    def _new_bar(self, loop: TrainLoop, step: int) -> None:
        if self._bar is not None:
            self._bar.close()
        end = min(loop.total_steps, (step // self.period_steps + 1) * self.period_steps)
        self._bar = tqdm(
            total=end - step,
            desc=f"steps {step + 1}-{end}/{loop.total_steps} (epoch {loop.epoch_at(end):g})",
            disable=self.quiet,
            leave=False,
            dynamic_ncols=True,
        )

    def on_train_start(self, loop: TrainLoop) -> None:
        self._new_bar(loop, loop.step)

    def on_step_end(self, loop, step, metrics) -> None:
        self._pending.append(metrics)
        if self._window_start is None:
            # The step was only dispatched: wait for it, so the clock starts when it has run and
            # the window's other steps are exactly what it times (one sync per window).
            jax.block_until_ready(metrics)
            self._window_start, self._timed_steps = time.perf_counter(), 0
        else:
            self._timed_steps += 1
        if self._bar is not None:
            self._bar.update(1)
        period_end = every(step, self.period_steps)
        if len(self._pending) >= self.every_steps or period_end or step == loop.total_steps:
            self._flush(loop, step)
        if period_end and step < loop.total_steps:
            self._new_bar(loop, step)

    def _flush(self, loop: TrainLoop, step: int) -> None:
        if not self._pending:
            return
        means = _means(self._pending)  # synchronises: the window's steps have finished
        record = {
            "step": step,
            "epoch": loop.epoch_at(step),
            "split": "train",
            **means,
            "learning_rate": float(self.schedule(step - 1)) * loop.lr_scale,  # after rollbacks
        }
        postfix = {"loss": f"{means['loss']:.4f}"}
        if self._timed_steps:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            throughput = self._timed_steps * self.units_per_step / elapsed
            record[f"{self.unit}_per_sec"] = throughput
            postfix[f"{self.unit[:3]}_s"] = f"{throughput:,.0f}"
        self.writer.write(record)
        if self._bar is not None:
            self._bar.set_postfix(**postfix)
        self._pending, self._window_start = [], None

    def on_train_end(self, loop: TrainLoop) -> None:
        self._flush(loop, loop.step)
        if self._bar is not None:
            self._bar.close()


class Evaluator(Callback):
    """Evaluates the current state on a split every ``every_steps`` steps and at the last step.

    Publishes ``loop.last_evaluation = (step, metrics)`` (metrics prefixed ``val_``) for early
    stopping and checkpointing, writes a ``split: val`` record, keeps the learning-curve history
    (resumable) and prints one line per evaluation.
    """

    def __init__(
        self,
        evaluate: Callable[[Any], dict[str, Any]],
        writer: Any,
        *,
        every_steps: int,
        schedule: Callable[[int], Any],
        print_line: Callable[[str], None],
        split: str = "val",
    ):
        self.evaluate, self.writer, self.every_steps = evaluate, writer, max(1, int(every_steps))
        self.schedule, self.print_line, self.split = schedule, print_line, split
        self.history: list[dict[str, Any]] = []
        self._train: list[Mapping[str, jax.Array]] = []
        self._period_start = time.perf_counter()

    def on_train_start(self, loop) -> None:
        self._period_start = time.perf_counter()

    def on_step_end(self, loop, step, metrics) -> None:
        self._train.append({k: metrics[k] for k in ("loss", "accuracy") if k in metrics})
        if not (every(step, self.every_steps) or step == loop.total_steps):
            return
        if loop.diverged is not None:
            return
        train = {f"train_{k}": v for k, v in _means(self._train).items()}
        results = self.evaluate(loop.state)
        scalars = {
            k: v
            for k, v in results.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        seconds = time.perf_counter() - self._period_start
        record = {
            "step": step,
            "epoch": loop.epoch_at(step),
            **train,
            **{f"{self.split}_{k}": v for k, v in scalars.items()},
            "learning_rate": float(self.schedule(step - 1)) * loop.lr_scale,  # after rollbacks
            "period_seconds": seconds,
        }
        self.history.append(record)
        self.writer.write(
            {
                "step": step,
                "epoch": record["epoch"],
                "split": self.split,
                **scalars,
                **train,
                "period_seconds": seconds,
            }
        )
        loop.last_evaluation = (step, record)
        self._train, self._period_start = [], time.perf_counter()
        train_text = " ".join(
            f"{k} {train[f'train_{k}']:.4f}" for k in ("loss", "accuracy") if f"train_{k}" in train
        )
        val_text = " ".join(
            f"{k} {scalars[k]:.4f}" for k in ("loss", "accuracy", "perplexity") if k in scalars
        )
        self.print_line(
            f"step {step:6d} (epoch {record['epoch']:g}) | train {train_text} | "
            f"{self.split} {val_text} | lr {record['learning_rate']:.2e} | {seconds:.1f}s"
        )

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state) -> None:
        self.history = list(state.get("history", []))


class EarlyStopper(Callback):
    """Feeds each evaluation to ``EarlyStopping``; marks improvements and requests the stop."""

    def __init__(self, early_stopping: EarlyStopping, print_line: Callable[[str], None]):
        self.early_stopping, self.print_line = early_stopping, print_line
        self.improved_at: int | None = None

    def on_step_end(self, loop, step, metrics) -> None:
        if loop.last_evaluation is None or loop.last_evaluation[0] != step:
            return
        improved, stop = self.early_stopping.update(step, loop.last_evaluation[1])
        if improved:
            self.improved_at = step
        if stop:
            loop.request_stop(
                f"early stopping: no {self.early_stopping.monitor} improvement for "
                f"{self.early_stopping.evaluations_without_improvement} evaluations"
            )
            self.print_line(loop.stop_reason)

    def state_dict(self) -> dict:
        return self.early_stopping.state_dict()

    def load_state_dict(self, state) -> None:
        self.early_stopping.load_state_dict(state)


class InterruptCallback(Callback):
    """Stops the loop after the step during which SIGTERM/SIGINT arrived (the checkpoint of that
    step is then saved by ``Checkpointing``)."""

    def __init__(self, handler: Any):
        self.handler = handler

    def on_step_end(self, loop, step, metrics) -> None:
        name = self.handler.requested(step)
        if name is not None and not loop.should_stop:
            loop.interrupted = name
            loop.request_stop(f"{name} received: stopping after step {step}")


@jax.jit
def _count_nonfinite(counts: dict[str, jax.Array], bad: jax.Array, step: int, limit: int):
    """One step of ``DivergenceGuard``'s on-device counters (one dispatch, no host sync)."""
    run = jnp.where(bad, counts["run"] + 1, 0)
    hit = jnp.where((counts["hit"] < 0) & (run >= limit), step, counts["hit"])
    return {"run": run, "hit": hit, "skipped": counts["skipped"] + bad.astype(jnp.int32)}


class DivergenceGuard(Callback):
    """Watches the train step's ``nonfinite`` flag (loss or gradients not finite) on device and
    stops the loop once ``limit`` steps in a row were non-finite (1: at the first one).

    Under ``skip``/``rollback`` the train step drops non-finite updates, so the state stays
    finite; under ``stop`` nothing is saved once the limit is hit (``Checkpointing`` checks
    first), so no non-finite state reaches a checkpoint. The counters
    (steps in a row, total skipped, the step the limit was hit) live on device and are read on
    the host only at steps where something would be written: log windows, evaluations,
    checkpoints and the last step. ``loop.diverged`` then holds the step that hit the limit. The
    counts are loop state, so a resumed run keeps counting where the checkpoint left off.
    """

    def __init__(
        self,
        check_every: tuple[int | None, ...],
        *,
        limit: int = 1,
        print_line: Callable[[str], None] | None = None,
    ):
        self.check_every = tuple(int(n) for n in check_every if n)
        self.limit, self.print_line = int(limit), print_line
        self._saved = {"run": 0, "skipped": 0}
        self._counts: dict[str, jax.Array] | None = None
        self._reported = 0  # skipped steps already reported

    def on_train_start(self, loop) -> None:
        self._counts, self._reported = None, self._saved["skipped"]

    def on_step_end(self, loop, step, metrics) -> None:
        bad = metrics["nonfinite"]
        if self._counts is None:  # laid out like the flag (global on every process)
            zero = jnp.zeros_like(bad, jnp.int32)
            self._counts = {
                "run": zero + self._saved["run"],
                "hit": zero - 1,
                "skipped": zero + self._saved["skipped"],
            }
        self._counts = _count_nonfinite(self._counts, bad, step, self.limit)
        if any(every(step, n) for n in self.check_every) or step == loop.total_steps:
            self.check(loop)

    def check(self, loop) -> None:
        """Reads the counters (a host sync); stops the loop if the limit was hit."""
        if self._counts is None or loop.diverged is not None:
            return
        hit, skipped = (
            int(x) for x in jax.device_get((self._counts["hit"], self._counts["skipped"]))
        )
        if hit >= 0:
            loop.diverged = hit
            if self.limit == 1:
                reason = f"loss or gradients became non-finite at step {hit}"
            else:
                reason = (
                    f"loss or gradients were non-finite for {self.limit} steps in a row "
                    f"(steps {hit - self.limit + 1}-{hit})"
                )
            loop.request_stop(reason)
        elif skipped > self._reported and self.print_line is not None:
            self.print_line(
                f"skipped {skipped - self._reported} non-finite update(s) by step {loop.step} "
                f"({skipped} in all)"
            )
        self._reported = skipped

    def state_dict(self) -> dict:
        if self._counts is None:
            return dict(self._saved)
        run, skipped = jax.device_get((self._counts["run"], self._counts["skipped"]))
        return {"run": int(run), "skipped": int(skipped)}

    def load_state_dict(self, state) -> None:
        self._saved = {"run": int(state.get("run", 0)), "skipped": int(state.get("skipped", 0))}


class Checkpointing(Callback):
    """Saves the latest checkpoint every ``every_steps`` steps, after each evaluation, when the
    loop stops and at the end; saves the best checkpoint when early stopping saw an improvement.

    Each checkpoint holds the train state, the data iterator's position and every callback's
    ``state_dict`` (through ``loop.loop_state()``), so a resumed run continues bit for bit.
    ``guard`` is asked first, so a step past the divergence limit is never saved.
    ``save_initial`` saves the starting state of a run without checkpoints (what a rollback
    returns to when the run diverges before its first save).
    """

    def __init__(
        self,
        checkpointer: Any,
        *,
        every_steps: int | None,
        stopper: EarlyStopper,
        guard: DivergenceGuard | None = None,
        save_initial: bool = False,
    ):
        self.checkpointer, self.every_steps, self.stopper = checkpointer, every_steps, stopper
        self.guard, self.save_initial = guard, save_initial

    def on_train_start(self, loop) -> None:
        if self.save_initial and self.checkpointer.latest_step() is None:
            self._write(loop, loop.step)

    def on_step_end(self, loop, step, metrics) -> None:
        evaluated = loop.last_evaluation is not None and loop.last_evaluation[0] == step
        if evaluated or every(step, self.every_steps) or loop.should_stop:
            self._save(loop, step)

    def on_train_end(self, loop) -> None:
        if self.checkpointer.latest_step() != loop.step:
            self._save(loop, loop.step)
        self.checkpointer.wait()

    def _save(self, loop, step: int) -> None:
        if self.guard is not None:
            self.guard.check(loop)
        if loop.diverged is not None:
            return  # never saved past the divergence: the last finite checkpoint stays latest
        self._write(loop, step)

    def _write(self, loop, step: int) -> None:
        self.checkpointer.save(
            step,
            loop.state,
            data_iterator=loop.iterator,
            loop_state=loop.loop_state(),
            is_best=self.stopper.improved_at == step,
        )


class Profiler(Callback):
    """A ``jax.profiler`` trace of steps ``start_step``..``stop_step`` into ``logdir`` (open it
    with TensorBoard's profile plugin or Perfetto). Steps before ``start_step`` include compilation,
    so start after the first few."""

    def __init__(self, logdir: str, start_step: int, stop_step: int):
        if not 0 <= start_step < stop_step:
            raise ValueError(
                f"profile steps must satisfy 0 <= start < stop, got {start_step}..{stop_step}"
            )
        self.logdir, self.start_step, self.stop_step = logdir, start_step, stop_step
        self._active = False

    def on_train_start(self, loop) -> None:
        if loop.step == self.start_step:
            self._start()

    def on_step_end(self, loop, step, metrics) -> None:
        if step == self.start_step and not self._active:
            self._start()
        elif step == self.stop_step and self._active:
            jax.block_until_ready(metrics)
            self._stop()

    def on_train_end(self, loop) -> None:
        if self._active:
            self._stop()

    def _start(self) -> None:
        os.makedirs(self.logdir, exist_ok=True)
        jax.profiler.start_trace(self.logdir)
        self._active = True

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self._active = False
