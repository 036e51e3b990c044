"""Tests for jaxdl.train.callbacks.EarlyStopping: Keras' patience and start_from_epoch, modes,
min_delta, NaN, config, resume."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import struct
from flax.training.early_stopping import EarlyStopping as FlaxEarlyStopping
from jax.sharding import NamedSharding, PartitionSpec

from jaxdl import config_sections
from jaxdl.errors import ConfigError
from jaxdl.train.callbacks import EarlyStopper, EarlyStopping, Evaluator
from jaxdl.train.loop import TrainLoop


def feed(stopper: EarlyStopping, values, monitor: str = "val_accuracy"):
    """Updates ``stopper`` with one value per epoch; returns the list of (improved, stop)."""
    return [stopper.update(epoch, {monitor: value}) for epoch, value in enumerate(values)]


def test_max_mode_tracks_the_highest_value_and_its_epoch():
    stopper = EarlyStopping(mode="max")
    results = feed(stopper, [0.5, 0.7, 0.6, 0.8, 0.8])
    assert [improved for improved, _ in results] == [True, True, False, True, False]
    assert stopper.best == 0.8
    assert stopper.best_step == 3
    assert stopper.evaluations_without_improvement == 1


def test_min_mode_tracks_the_lowest_value_and_its_epoch():
    stopper = EarlyStopping(monitor="val_loss", mode="min")
    results = feed(stopper, [1.0, 0.8, 0.9, 0.5, 0.7], monitor="val_loss")
    assert [improved for improved, _ in results] == [True, True, False, True, False]
    assert stopper.best == 0.5
    assert stopper.best_step == 3


STEPS_PER_EPOCH = 10

# Keras' EarlyStopping(monitor="loss", patience=..., start_from_epoch=...) on these per-epoch
# losses, worked out by hand from its documentation ("patience: number of epochs with no
# improvement after which training will be stopped"; "start_from_epoch: number of epochs to wait
# before starting to monitor improvement", a warm-up in which training is not stopped). Keras
# counts epochs from 0; the expected values are the epoch at whose end training stops (None: it
# runs to the end) and the best epoch.
KERAS_CASES = [
    # The docs' example: patience=3 on a loss that never improves runs 4 epochs.
    ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], 3, 0, 3, 0),
    ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], 1, 0, 1, 0),
    ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], 0, 0, 1, 0),  # patience 0 stops as 1 does
    ([1.0, 0.9, 0.95, 0.8, 0.85, 0.9, 0.7], 2, 0, 5, 3),  # improvements reset the count
    ([1.0, 0.9, 0.95, 0.8, 0.85, 0.9, 0.7], 3, 0, None, 6),
    # Epochs 0 and 1 are not monitored: monitoring starts at epoch 2.
    ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], 1, 2, 3, 2),
    # The warm-up's better losses are not the best: 0.5 at epoch 2 is, then 0.4 at epoch 3.
    ([0.1, 0.2, 0.5, 0.4, 0.45, 0.46, 0.47], 2, 2, 5, 3),
    ([1.0, 1.1, 1.2, 1.3], 1, 10, None, None),  # never past the warm-up: never stops
]


@pytest.mark.parametrize(
    ("losses", "patience", "start_from_epoch", "stop_epoch", "best_epoch"), KERAS_CASES
)
def test_patience_and_start_from_epoch_stop_where_keras_does(
    losses, patience, start_from_epoch, stop_epoch, best_epoch
):
    section = config_sections.early_stopping("loss", "min")
    section.patience, section.start_from_epoch = patience, start_from_epoch
    stopper = EarlyStopping.from_config(
        section, monitor="val_loss", mode="max", steps_per_epoch=STEPS_PER_EPOCH
    )
    stops = []
    for epoch, loss in enumerate(losses):  # one evaluation at the end of every epoch
        _, stop = stopper.update((epoch + 1) * STEPS_PER_EPOCH, {"loss": loss})
        stops.append(stop)
        if stop:
            break
    assert (stops.index(True) if any(stops) else None) == stop_epoch
    expected_best_step = None if best_epoch is None else (best_epoch + 1) * STEPS_PER_EPOCH
    assert stopper.best_step == expected_best_step


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_stops_at_the_patience_th_evaluation_without_improvement(patience):
    stopper = EarlyStopping(mode="max", patience=patience)
    results = feed(stopper, [0.9] + [0.5] * (patience + 3))
    stops = [stop for _, stop in results]
    assert stops.index(True) == patience  # the first of the bad evaluations is index 1
    assert stopper.evaluations_without_improvement == patience + 3


def test_improvement_resets_the_patience_count():
    stopper = EarlyStopping(mode="max", patience=2)
    results = feed(stopper, [0.5, 0.4, 0.6, 0.4, 0.4])
    assert [stop for _, stop in results] == [False] * 4 + [True]
    assert stopper.best_step == 2


def test_evaluations_up_to_start_from_step_are_ignored():
    stopper = EarlyStopping(monitor="m", mode="max", patience=1, start_from_step=15)
    assert stopper.update(5, {"m": 0.9}) == (False, False)
    assert stopper.update(15, {"m": 0.1}) == (False, False)
    assert stopper.best is None and stopper.evaluations_without_improvement == 0
    assert stopper.update(20, {"m": 0.2}) == (True, False)
    assert stopper.update(25, {"m": 0.2}) == (False, True)
    assert stopper.best_step == 20


def test_patience_none_never_stops_but_still_tracks_the_best():
    stopper = EarlyStopping(mode="max", patience=None)
    results = feed(stopper, [0.9] + [0.1] * 200)
    assert not any(stop for _, stop in results)
    assert stopper.best == 0.9 and stopper.best_step == 0
    assert stopper.evaluations_without_improvement == 200


@pytest.mark.parametrize(
    "mode, values, expected_improved",
    [
        ("max", [0.50, 0.505, 0.52], [True, False, True]),
        ("min", [1.00, 0.995, 0.98], [True, False, True]),
    ],
)
def test_improvement_must_exceed_min_delta(mode, values, expected_improved):
    stopper = EarlyStopping(monitor="m", mode=mode, min_delta=0.01)
    results = feed(stopper, values, monitor="m")
    assert [improved for improved, _ in results] == expected_improved


def test_an_equal_value_is_not_an_improvement():
    stopper = EarlyStopping(mode="max")
    assert feed(stopper, [0.5, 0.5])[1] == (False, False)
    assert stopper.best_step == 0


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_never_count_as_improvement(mode, bad):
    stopper = EarlyStopping(monitor="m", mode=mode, patience=2)
    improved, stop = stopper.update(0, {"m": bad})
    assert (improved, stop) == (False, False)
    assert stopper.best is None
    stopper.update(1, {"m": 0.5})
    assert stopper.best == 0.5
    results = [stopper.update(epoch, {"m": bad}) for epoch in (2, 3)]
    assert results == [(False, False), (False, True)]  # two non-finite epochs exhaust patience=2
    assert stopper.best == 0.5 and stopper.best_step == 1


def test_min_mode_matches_flax_early_stopping_with_one_less_patience_until_the_first_stop():
    # flax.training.early_stopping stops on the (patience + 1)-th evaluation without improvement.
    rng = np.random.default_rng(0)
    for _ in range(20):
        losses = np.cumsum(rng.normal(0.0, 0.1, size=30)) + 5.0
        ours = EarlyStopping(monitor="loss", mode="min", patience=3, min_delta=0.02)
        reference = FlaxEarlyStopping(patience=2, min_delta=0.02)
        for epoch, loss in enumerate(losses):
            improved, stop = ours.update(epoch, {"loss": float(loss)})
            reference = reference.update(float(loss))
            assert improved == reference.has_improved
            assert stop == reference.should_stop
            if stop:
                break


def test_state_dict_round_trip_resumes_the_same_decisions():
    # Steps 0 and 1 are the warm-up; the resume falls after two evaluations without improvement.
    values = [0.99, 0.98, 0.5, 0.6, 0.55, 0.58, 0.59]
    settings = {"mode": "max", "patience": 3, "min_delta": 0.005, "start_from_step": 1}
    uninterrupted = EarlyStopping(**settings)
    expected = feed(uninterrupted, values)
    assert expected == [(False, False)] * 2 + [(True, False)] * 2 + [(False, False)] * 2 + [
        (False, True)
    ]

    first = EarlyStopping(**settings)
    before = [first.update(epoch, {"val_accuracy": v}) for epoch, v in enumerate(values[:6])]
    state = first.state_dict()
    resumed = EarlyStopping(**settings)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    after = [
        resumed.update(epoch, {"val_accuracy": v}) for epoch, v in enumerate(values) if epoch >= 6
    ]
    assert before + after == expected
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_load_empty_state_dict_resets_to_fresh():
    stopper = EarlyStopping(mode="max")
    feed(stopper, [0.5, 0.4])
    stopper.load_state_dict({})
    assert stopper.state_dict() == {
        "best": None,
        "best_step": None,
        "evaluations_without_improvement": 0,
    }


def test_unknown_monitor_is_a_value_error_naming_it_and_the_metrics():
    stopper = EarlyStopping(monitor="val_acc")
    with pytest.raises(ValueError, match="val_acc") as error:
        stopper.update(0, {"val_accuracy": 0.5, "val_loss": 1.0})
    assert "val_accuracy" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"mode": "maximum"}, "mode"),
        ({"patience": -1}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"start_from_step": -1}, "start_from_step"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        EarlyStopping(**kwargs)


def make_section(**fields) -> ml_collections.ConfigDict:
    section = config_sections.early_stopping("val_accuracy", "max")
    section.update(fields)
    return section


def test_from_config_converts_start_from_epoch_with_steps_per_epoch():
    stopper = EarlyStopping.from_config(
        make_section(start_from_epoch=3, patience=2), monitor="x", mode="min", steps_per_epoch=7
    )
    assert stopper.start_from_step == 21 and stopper.patience == 2
    assert (stopper.monitor, stopper.mode) == ("val_accuracy", "max")
    by_step = EarlyStopping.from_config(
        make_section(start_from_step=5), monitor="x", mode="min", steps_per_epoch=7
    )
    assert by_step.start_from_step == 5


def test_from_config_uses_the_task_defaults_for_unset_monitor_and_mode():
    stopper = EarlyStopping.from_config({}, monitor="val_loss", mode="min", steps_per_epoch=4)
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val_loss", "min", None)
    assert stopper.start_from_step == 0


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"start_from_epoch": 1, "start_from_step": 4}, "not both"),
        ({"start_from_epoch": -2}, "start_from_epoch"),
        ({"start_from_step": 2.5}, "start_from_step"),
        ({"min_delta": "big"}, "min_delta"),
        ({"patience": -1}, "patience"),
    ],
)
def test_from_config_rejects_invalid_fields_in_one_line(fields, needle):
    with pytest.raises(ConfigError, match=needle) as error:
        EarlyStopping.from_config(
            ml_collections.ConfigDict(fields), monitor="m", mode="max", steps_per_epoch=4
        )
    assert "\n" not in str(error.value)


def test_from_config_rejects_a_misspelt_field():
    with pytest.raises(ConfigError, match=r"unknown early_stopping field\(s\) \['start_epoch'\]"):
        EarlyStopping.from_config(
            make_section(start_epoch=2), monitor="m", mode="max", steps_per_epoch=4
        )


@struct.dataclass
class _State:
    step: jax.Array


class _NullWriter:
    def write(self, record):
        del record


def test_the_loop_stops_at_the_patience_th_evaluation_after_the_warm_up():
    """Evaluations twice per epoch (every 2 of 4 steps); the first 2 epochs are a warm-up."""
    scores = iter([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5])
    evaluator = Evaluator(
        lambda state: {"accuracy": next(scores)},
        _NullWriter(),
        every_steps=2,
        schedule=lambda step: 0.1,
        print_line=lambda line: None,
    )
    early_stopping = EarlyStopping.from_config(
        make_section(patience=2, start_from_epoch=2), monitor="m", mode="max", steps_per_epoch=4
    )
    stopper = EarlyStopper(early_stopping, print_line=lambda line: None)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    loop = TrainLoop(
        state=_State(step=jnp.asarray(0)),
        train_step=lambda state, batch: (_State(step=state.step + 1), {}),
        iterator=iter(lambda: {"x": np.zeros(2, np.float32)}, None),
        batch_sharding=NamedSharding(mesh, PartitionSpec()),
        total_steps=40,
        steps_per_epoch=4,
        callbacks=[evaluator, stopper],
    )
    loop.run()
    # Steps 2..8 are the warm-up; 0.5 at step 10 is the best, steps 12 and 14 do not improve.
    assert loop.step == 14 and loop.should_stop
    assert "no val_accuracy improvement for 2 evaluations" in loop.stop_reason
    assert early_stopping.best_step == 10 and stopper.improved_at == 10
    assert loop.loop_state()["callbacks"]["EarlyStopper"] == {
        "best": 0.5,
        "best_step": 10,
        "evaluations_without_improvement": 2,
    }
