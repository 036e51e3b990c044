"""The step loop and its callbacks, driven by a cheap stand-in step (no model)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from jaxdl.train.callbacks import (
    Callback,
    EarlyStopper,
    EarlyStopping,
    Evaluator,
    Profiler,
    TrainLogger,
    every,
)
from jaxdl.train.loop import TrainLoop


@struct.dataclass
class _State:
    step: jax.Array
    total: jax.Array


def _step(state, batch):
    total = state.total + jnp.sum(batch["x"])
    return _State(step=state.step + 1, total=total), {"loss": total, "accuracy": total * 0}


def _batches():
    index = 0
    while True:
        yield {"x": np.full((2,), index, np.float32)}
        index += 1


class _Writer:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(dict(record))


class _Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, loop):
        self.calls.append(("start", loop.step))

    def on_step_end(self, loop, step, metrics):
        self.calls.append(("step", step))

    def on_train_end(self, loop):
        self.calls.append(("end", loop.step))


def _loop(callbacks, total_steps=10, start=0):
    sharding = NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec()
    )
    state = _State(step=jnp.asarray(start), total=jnp.asarray(0.0))
    return TrainLoop(
        state=state,
        train_step=_step,
        iterator=_batches(),
        batch_sharding=sharding,
        total_steps=total_steps,
        steps_per_epoch=4,
        callbacks=callbacks,
    )


def test_every_fires_on_multiples_and_never_for_none():
    assert [s for s in range(1, 10) if every(s, 3)] == [3, 6, 9]
    assert not any(every(s, None) for s in range(1, 10))
    assert not any(every(s, 0) for s in range(1, 10))


def test_the_loop_runs_from_the_state_step_to_the_total_and_calls_every_hook():
    recorder = _Recorder()
    loop = _loop([recorder], total_steps=5, start=2)
    state = loop.run()
    assert int(state.step) == 5
    assert recorder.calls == [("start", 2), ("step", 3), ("step", 4), ("step", 5), ("end", 5)]
    # Batches 0, 1, 2 were consumed: 2 * (0 + 1 + 2).
    assert float(state.total) == 6.0
    assert loop.epoch_at(6) == 1.5


def test_evaluations_drive_early_stopping_which_stops_the_loop():
    writer = _Writer()
    scores = iter([0.5, 0.7, 0.6, 0.6, 0.9])
    evaluator = Evaluator(
        lambda state: {"loss": 1.0, "accuracy": next(scores)},
        writer,
        every_steps=2,
        schedule=lambda step: 0.1,
        print_line=lambda line: None,
    )
    stopper = EarlyStopper(EarlyStopping(monitor="val_accuracy", mode="max", patience=2), print)
    loop = _loop([evaluator, stopper], total_steps=20)
    loop.run()
    # Evaluations at 2, 4, 6, 8: best 0.7 at step 4, then the second without improvement stops.
    assert loop.step == 8 and loop.should_stop
    assert "no val_accuracy improvement for 2 evaluations" in loop.stop_reason
    assert stopper.improved_at == 4 and stopper.early_stopping.best_step == 4
    assert [r["step"] for r in writer.records] == [2, 4, 6, 8]
    assert [r["val_accuracy"] for r in evaluator.history] == [0.5, 0.7, 0.6, 0.6]
    saved = loop.loop_state()["callbacks"]
    assert saved["EarlyStopper"]["evaluations_without_improvement"] == 2
    assert len(saved["Evaluator"]["history"]) == 4
    json.dumps(loop.loop_state())  # checkpointed as JSON


def test_loop_state_round_trips_into_fresh_callbacks():
    evaluator = Evaluator(
        lambda s: {"loss": 1.0}, _Writer(), every_steps=3, schedule=lambda s: 0.0, print_line=print
    )
    loop = _loop([evaluator], total_steps=6)
    loop.run()
    fresh = Evaluator(
        lambda s: {"loss": 1.0}, _Writer(), every_steps=3, schedule=lambda s: 0.0, print_line=print
    )
    _loop([fresh]).load_loop_state(json.loads(json.dumps(loop.loop_state())))
    assert fresh.history == evaluator.history and len(fresh.history) == 2


def test_train_logger_windows_end_at_evaluation_periods_and_time_only_training():
    writer = _Writer()
    logger = TrainLogger(
        writer,
        every_steps=3,
        schedule=lambda step: 0.5,
        units_per_step=8,
        unit="tokens",
        period_steps=4,
        quiet=True,
    )
    _loop([logger], total_steps=10).run()
    assert [r["step"] for r in writer.records] == [3, 4, 7, 8, 10]
    assert all(r["split"] == "train" and r["learning_rate"] == 0.5 for r in writer.records)
    # One-step windows (steps 4 and 8) cannot be timed; the others are, in tokens/s.
    timed = {r["step"]: r.get("tokens_per_sec") for r in writer.records}
    assert timed[4] is None and timed[8] is None
    assert all(timed[step] > 0 for step in (3, 7, 10))
    # Mean loss of the window: steps 1..3 have running totals 0, 2, 6.
    assert writer.records[0]["loss"] == pytest.approx(8 / 3)


def test_profiler_writes_a_trace_of_the_chosen_steps(tmp_path):
    profiler = Profiler(str(tmp_path / "profile"), start_step=2, stop_step=4)
    _loop([profiler], total_steps=6).run()
    traces = [name for _, _, names in os.walk(tmp_path / "profile") for name in names]
    assert any(name.endswith(".xplane.pb") for name in traces), traces
    with pytest.raises(ValueError, match="profile steps"):
        Profiler(str(tmp_path), start_step=5, stop_step=5)
