"""Tests for jaxdl.train.callbacks.EarlyStopping: modes, patience, min_delta, NaN, resume."""

import math

import numpy as np
import pytest
from flax.training.early_stopping import EarlyStopping as FlaxEarlyStopping

from jaxdl.train.callbacks import EarlyStopping


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


@pytest.mark.parametrize("patience", [0, 1, 3])
def test_stops_once_more_than_patience_epochs_pass_without_improvement(patience):
    stopper = EarlyStopping(mode="max", patience=patience)
    results = feed(stopper, [0.9] + [0.5] * (patience + 3))
    stops = [stop for _, stop in results]
    first_stop = stops.index(True)
    # Same convention as flax.training.early_stopping: stop on the (patience + 1)-th bad epoch.
    assert first_stop == patience + 1
    assert not any(stops[:first_stop])


def test_improvement_resets_the_patience_count():
    stopper = EarlyStopping(mode="max", patience=2)
    results = feed(stopper, [0.5, 0.4, 0.4, 0.6, 0.4, 0.4, 0.4])
    assert [stop for _, stop in results] == [False] * 6 + [True]
    assert stopper.best_step == 3


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
    stopper = EarlyStopping(monitor="m", mode=mode, patience=1)
    improved, stop = stopper.update(0, {"m": bad})
    assert (improved, stop) == (False, False)
    assert stopper.best is None
    stopper.update(1, {"m": 0.5})
    assert stopper.best == 0.5
    results = [stopper.update(epoch, {"m": bad}) for epoch in (2, 3)]
    assert [improved for improved, _ in results] == [False, False]
    assert results[-1][1] is True  # two non-finite epochs exhaust patience=1
    assert stopper.best == 0.5 and stopper.best_step == 1


def test_min_mode_matches_flax_early_stopping_until_the_first_stop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        losses = np.cumsum(rng.normal(0.0, 0.1, size=30)) + 5.0
        ours = EarlyStopping(monitor="loss", mode="min", patience=3, min_delta=0.02)
        reference = FlaxEarlyStopping(patience=3, min_delta=0.02)
        for epoch, loss in enumerate(losses):
            improved, stop = ours.update(epoch, {"loss": float(loss)})
            reference = reference.update(float(loss))
            assert improved == reference.has_improved
            assert stop == reference.should_stop
            if stop:
                break


def test_state_dict_round_trip_resumes_the_same_decisions():
    values = [0.5, 0.6, 0.55, 0.58, 0.59, 0.7, 0.65, 0.6, 0.6, 0.6]
    uninterrupted = EarlyStopping(mode="max", patience=2, min_delta=0.005)
    expected = feed(uninterrupted, values)

    first = EarlyStopping(mode="max", patience=2, min_delta=0.005)
    before = [first.update(epoch, {"val_accuracy": v}) for epoch, v in enumerate(values[:4])]
    state = first.state_dict()
    resumed = EarlyStopping(mode="max", patience=2, min_delta=0.005)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    after = [
        resumed.update(epoch, {"val_accuracy": v}) for epoch, v in enumerate(values) if epoch >= 4
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
    "kwargs, needle", [({"mode": "maximum"}, "mode"), ({"patience": -1}, "patience")]
)
def test_invalid_settings_are_value_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        EarlyStopping(**kwargs)
