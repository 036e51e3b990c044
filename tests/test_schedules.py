"""Tests for jaxdl.optim.schedules: torch-equivalent values, warm-up, config building, errors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdl.optim import (
    build_schedule,
    constant,
    cosine_annealing,
    cosine_warm_restarts,
    exponential_decay,
    step_decay,
    with_linear_warmup,
)
from jaxdl.optim.schedules import stepped_per_epoch

# (first_period, period_multiplier) combos; several have boundaries where the float log is inexact.
WARM_RESTART_COMBOS = [(1, 1), (7, 1), (1, 2), (3, 2), (10, 2), (5, 3), (2, 4), (1, 10), (4, 5)]
NUM_STEPS = 3000


def evaluate(schedule, num_steps: int) -> np.ndarray:
    """Schedule values at steps 0..num_steps-1, computed under jit on traced int32 steps."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(num_steps, dtype=jnp.int32)))


def warm_restarts_closed_form(t: int, init: float, t0: int, mult: int, eta_min: float) -> float:
    """The SGDR closed form with the period index found in exact Python integer arithmetic."""
    if mult == 1:
        t_cur, t_i = t % t0, t0
    else:
        n = 0
        while t0 * (mult ** (n + 1) - 1) // (mult - 1) <= t:
            n += 1
        t_cur, t_i = t - t0 * (mult**n - 1) // (mult - 1), t0 * mult**n
    return eta_min + (init - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def period_boundaries(t0: int, mult: int, limit: int) -> list[int]:
    """Steps at which a new SGDR period starts, below ``limit``."""
    boundaries, start, length = [], 0, t0
    while start < limit:
        boundaries.append(start)
        start, length = start + length, length * mult
    return boundaries


def torch_learning_rates(make_scheduler, init_value: float, num_steps: int) -> np.ndarray:
    """Learning rate a torch user sees at each step: read lr, optimizer.step(), scheduler.step()."""
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=init_value)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    rates = []
    for _ in range(num_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.asarray(rates)


@pytest.mark.parametrize(("first_period", "multiplier"), WARM_RESTART_COMBOS)
def test_cosine_warm_restarts_matches_closed_form_at_every_step(first_period, multiplier):
    init, eta_min = 0.1, 0.001
    values = evaluate(cosine_warm_restarts(init, first_period, multiplier, eta_min), NUM_STEPS)
    expected = [
        warm_restarts_closed_form(t, init, first_period, multiplier, eta_min)
        for t in range(NUM_STEPS)
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("first_period", "multiplier"), WARM_RESTART_COMBOS)
def test_cosine_warm_restarts_restarts_exactly_at_period_boundaries(first_period, multiplier):
    init, eta_min = 0.5, 0.01
    values = evaluate(cosine_warm_restarts(init, first_period, multiplier, eta_min), NUM_STEPS)
    boundaries = period_boundaries(first_period, multiplier, NUM_STEPS)
    for previous, boundary in zip(boundaries, boundaries[1:], strict=False):
        length = boundary - previous
        end_of_period = (
            eta_min + (init - eta_min) * (1 + math.cos(math.pi * (length - 1) / length)) / 2
        )
        assert values[boundary] == pytest.approx(init, rel=1e-6)
        assert values[boundary - 1] == pytest.approx(end_of_period, rel=1e-5)


@pytest.mark.parametrize(("first_period", "multiplier"), WARM_RESTART_COMBOS)
def test_cosine_warm_restarts_matches_torch(first_period, multiplier):
    init, eta_min = 0.1, 0.001
    expected = torch_learning_rates(
        lambda lr_scheduler, opt: lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=first_period, T_mult=multiplier, eta_min=eta_min
        ),
        init,
        NUM_STEPS,
    )
    values = evaluate(cosine_warm_restarts(init, first_period, multiplier, eta_min), NUM_STEPS)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)


def test_cosine_warm_restarts_is_exact_for_large_steps_near_boundaries():
    # Period starts of (T_0=3, T_mult=2) are 3 * (2**n - 1); check both sides of a far one.
    schedule = jax.jit(cosine_warm_restarts(1.0, 3, 2))
    start = 3 * (2**20 - 1)
    assert float(schedule(jnp.int32(start))) == pytest.approx(1.0)
    assert float(schedule(jnp.int32(start - 1))) < 1e-6


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"first_period": 0}, ValueError),
        ({"first_period": 2.5}, TypeError),
        ({"first_period": 4, "period_multiplier": 0}, ValueError),
        ({"first_period": 4, "period_multiplier": 1.5}, TypeError),
    ],
)
def test_cosine_warm_restarts_rejects_invalid_periods(kwargs, error):
    with pytest.raises(error, match="first_period|period_multiplier"):
        cosine_warm_restarts(0.1, **kwargs)


def test_step_decay_matches_closed_form_and_torch():
    values = evaluate(step_decay(0.1, step_size=3, gamma=0.5), 40)
    np.testing.assert_allclose(values, [0.1 * 0.5 ** (t // 3) for t in range(40)], rtol=1e-6)
    expected = torch_learning_rates(
        lambda lr_scheduler, opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), 0.1, 40
    )
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_exponential_decay_matches_closed_form_and_torch():
    values = evaluate(exponential_decay(0.1, gamma=0.9), 50)
    np.testing.assert_allclose(values, [0.1 * 0.9**t for t in range(50)], rtol=1e-5)
    expected = torch_learning_rates(
        lambda lr_scheduler, opt: lr_scheduler.ExponentialLR(opt, gamma=0.9), 0.1, 50
    )
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_cosine_annealing_matches_torch_then_holds_min_value():
    total, init, eta_min = 25, 0.1, 0.002
    values = evaluate(cosine_annealing(init, total, eta_min), 40)
    closed_form = [
        eta_min + (init - eta_min) * (1 + math.cos(math.pi * t / total)) / 2
        for t in range(total + 1)
    ]
    np.testing.assert_allclose(values[: total + 1], closed_form, rtol=1e-5)
    np.testing.assert_allclose(values[total:], eta_min, rtol=1e-5)
    expected = torch_learning_rates(
        lambda lr_scheduler, opt: lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=eta_min),
        init,
        total + 1,
    )
    np.testing.assert_allclose(values[: total + 1], expected, rtol=1e-5)


def test_constant_schedule_returns_value_at_every_step():
    np.testing.assert_allclose(evaluate(constant(0.3), 10), 0.3)


@pytest.mark.parametrize(
    "make_schedule",
    [
        lambda: step_decay(0.1, 0, 0.5),
        lambda: step_decay(0.1, 3, 0.0),
        lambda: exponential_decay(0.1, -0.9),
        lambda: cosine_annealing(0.1, 0),
        lambda: with_linear_warmup(constant(0.1), -1),
    ],
)
def test_schedules_reject_invalid_arguments(make_schedule):
    with pytest.raises(ValueError, match="step_size|gamma|total_steps|warmup_steps"):
        make_schedule()


def test_linear_warmup_ramps_to_schedule_start_then_follows_shifted_schedule():
    base = step_decay(1.0, step_size=2, gamma=0.5)
    values = evaluate(with_linear_warmup(base, warmup_steps=4, init_value=0.2), 12)
    np.testing.assert_allclose(values[:4], [0.2, 0.4, 0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(values[4:], evaluate(base, 8), rtol=1e-6)


def test_zero_warmup_leaves_schedule_unchanged():
    base = cosine_annealing(1.0, 10)
    assert with_linear_warmup(base, 0) is base


def make_config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def test_build_schedule_converts_warmup_and_step_size_epochs_to_steps():
    config = make_config(name="step", warmup_epochs=0.5, step_size_epochs=2, gamma=0.1)
    schedule = build_schedule(config, base_learning_rate=1.0, steps_per_epoch=10, total_steps=100)
    values = evaluate(schedule, 50)
    np.testing.assert_allclose(values[:5], [0.0, 0.2, 0.4, 0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(values[5:25], 1.0)
    np.testing.assert_allclose(values[25:45], 0.1, rtol=1e-6)
    np.testing.assert_allclose(values[45:], 0.01, rtol=1e-5)


def test_build_schedule_exponential_gamma_is_per_epoch():
    config = make_config(name="exponential", gamma=0.5)
    schedule = build_schedule(config, base_learning_rate=2.0, steps_per_epoch=8, total_steps=100)
    values = evaluate(schedule, 25)
    np.testing.assert_allclose(values[[0, 8, 16, 24]], [2.0, 1.0, 0.5, 0.25], rtol=1e-5)
    assert values[4] == pytest.approx(2.0 * 0.5**0.5, rel=1e-5)


def test_build_schedule_cosine_reaches_min_value_at_total_steps_after_warmup():
    config = make_config(name="cosine", warmup_epochs=1, min_value=0.01)
    schedule = build_schedule(config, base_learning_rate=1.0, steps_per_epoch=10, total_steps=50)
    values = evaluate(schedule, 60)
    assert values[10] == pytest.approx(1.0)
    assert values[30] == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-5)  # halfway through 40 steps
    np.testing.assert_allclose(values[50:], 0.01, rtol=1e-5)


def test_build_schedule_warm_restarts_periods_in_epochs_round_to_at_least_one_step():
    config = make_config(name="cosine_warm_restarts", first_period_epochs=1.5, period_multiplier=2)
    schedule = build_schedule(config, base_learning_rate=1.0, steps_per_epoch=4, total_steps=100)
    np.testing.assert_allclose(
        evaluate(schedule, 100), evaluate(cosine_warm_restarts(1.0, 6, 2), 100)
    )
    tiny = make_config(name="cosine_warm_restarts", first_period_epochs=0.01)
    schedule = build_schedule(tiny, base_learning_rate=1.0, steps_per_epoch=4, total_steps=100)
    np.testing.assert_allclose(evaluate(schedule, 5), 1.0)  # one-step periods restart every step


def test_build_schedule_constant_ignores_absent_optional_fields():
    schedule = build_schedule(
        make_config(name="constant"), base_learning_rate=0.3, steps_per_epoch=5, total_steps=10
    )
    np.testing.assert_allclose(evaluate(schedule, 10), 0.3)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "linear"}, "linear"),
        ({}, "None"),
        ({"name": "step", "gamma": 0.1}, "step_size_epochs"),
        ({"name": "step", "step_size_epochs": 2}, "gamma"),
        ({"name": "exponential"}, "gamma"),
        ({"name": "cosine_warm_restarts"}, "first_period_epochs"),
        ({"name": "cosine", "warmup_epochs": 10}, "warm-up"),
        ({"name": "step", "step_size_epochs": -1, "gamma": 0.1}, "step_size_epochs"),
    ],
)
def test_build_schedule_rejects_unknown_name_and_missing_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(
            make_config(**fields), base_learning_rate=0.1, steps_per_epoch=10, total_steps=100
        )


def test_misspelt_schedule_field_is_an_error_not_ignored():
    config = make_config(name="cosine", warmup_epoch=1.0)
    with pytest.raises(ValueError, match=r"unknown schedule field\(s\) \['warmup_epoch'\]"):
        build_schedule(config, base_learning_rate=1.0, steps_per_epoch=10, total_steps=100)


def torch_learning_rates_per_epoch(
    make_scheduler, init_value: float, steps_per_epoch: int, num_epochs: int
) -> np.ndarray:
    """Learning rate at each step of a torch loop that calls ``scheduler.step()`` once per epoch."""
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=init_value)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    rates = []
    for _ in range(num_epochs):
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
        scheduler.step()
    return np.asarray(rates)


STAIRCASE_CASES = [
    (
        {"name": "exponential", "gamma": 0.8},
        lambda lr_scheduler, opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    ),
    (
        {"name": "step", "step_size_epochs": 3, "gamma": 0.5},
        lambda lr_scheduler, opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    ),
    (
        {"name": "cosine", "min_value": 0.01},
        lambda lr_scheduler, opt: lr_scheduler.CosineAnnealingLR(opt, T_max=12, eta_min=0.01),
    ),
    (
        {"name": "cosine_warm_restarts", "first_period_epochs": 2, "period_multiplier": 2},
        lambda lr_scheduler, opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2),
    ),
]


@pytest.mark.parametrize(("fields", "make_scheduler"), STAIRCASE_CASES)
def test_staircase_equals_torch_scheduler_stepped_once_per_epoch_at_every_step(
    fields, make_scheduler
):
    steps_per_epoch, num_epochs, init = 7, 12, 0.1
    config = make_config(**fields, staircase=True)
    schedule = build_schedule(
        config,
        base_learning_rate=init,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * num_epochs,
    )
    expected = torch_learning_rates_per_epoch(make_scheduler, init, steps_per_epoch, num_epochs)
    values = evaluate(schedule, steps_per_epoch * num_epochs)
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-9)


def test_exponential_without_staircase_decays_within_an_epoch():
    config = make_config(name="exponential", gamma=0.5)
    schedule = build_schedule(config, base_learning_rate=1.0, steps_per_epoch=4, total_steps=40)
    values = evaluate(schedule, 8)
    assert np.all(np.diff(values) < 0)  # every step lowers the rate, unlike ExponentialLR per epoch
    assert values[4] == pytest.approx(0.5, rel=1e-5)


def test_staircase_holds_warmup_per_step_and_counts_epochs_from_its_end():
    config = make_config(name="exponential", gamma=0.5, warmup_epochs=1, staircase=True)
    schedule = build_schedule(config, base_learning_rate=1.0, steps_per_epoch=4, total_steps=40)
    values = evaluate(schedule, 16)
    np.testing.assert_allclose(values[:4], [0.0, 0.25, 0.5, 0.75], rtol=1e-6)
    np.testing.assert_allclose(values[4:], [1.0] * 4 + [0.5] * 4 + [0.25] * 4, rtol=1e-6)


def test_stepped_per_epoch_holds_the_value_of_each_epochs_first_step():
    base = cosine_annealing(1.0, 20)
    values = evaluate(stepped_per_epoch(base, 5), 20)
    np.testing.assert_allclose(values, np.repeat(evaluate(base, 20)[::5], 5), rtol=1e-6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        stepped_per_epoch(base, 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "constant", "staircase": True}, "no effect"),
        ({"name": "exponential", "gamma": 0.9, "staircase": "yes"}, "staircase"),
        ({"name": "exponential", "gamma": 0.9, "staircase": 1}, "staircase"),
    ],
)
def test_build_schedule_rejects_invalid_staircase(fields, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(
            make_config(**fields), base_learning_rate=0.1, steps_per_epoch=10, total_steps=100
        )
