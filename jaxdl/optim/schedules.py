"""Learning-rate schedules as plain `optax.Schedule` callables (step -> scalar value).

Each schedule reproduces the PyTorch scheduler named in its docstring: its value at integer
step ``t`` equals the torch learning rate after ``t`` calls to ``scheduler.step()``. All of them
are jit-traceable (they accept traced integer step arrays) and can be used outside jaxdl.
A torch scheduler stepped once per epoch instead is reproduced by ``stepped_per_epoch``.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine", "cosine_warm_restarts")


def _require_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int, or raise a one-line error if it is not an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _require_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def constant(value: float) -> optax.Schedule:
    """Schedule that returns ``value`` at every step (torch: no scheduler)."""
    return optax.constant_schedule(value)


def step_decay(init_value: float, step_size: int, gamma: float) -> optax.Schedule:
    """``init_value * gamma ** (t // step_size)``, equal to torch ``StepLR(step_size, gamma)``.

    Exact while steps stay below 2**24 (optax computes ``t / step_size`` in float32).
    """
    step_size = _require_int("step_size", step_size, 1)
    gamma = _require_positive("gamma", gamma)
    return optax.exponential_decay(
        init_value, transition_steps=step_size, decay_rate=gamma, staircase=True
    )


def exponential_decay(init_value: float, gamma: float) -> optax.Schedule:
    """``init_value * gamma ** t`` (per-step decay), equal to torch ``ExponentialLR(gamma)``.

    ``ExponentialLR`` stepped once per epoch is ``step_decay(init_value, steps_per_epoch, gamma)``.
    """
    gamma = _require_positive("gamma", gamma)
    return optax.exponential_decay(init_value, transition_steps=1, decay_rate=gamma)


def cosine_annealing(init_value: float, total_steps: int, min_value: float = 0.0) -> optax.Schedule:
    """Half-period cosine from ``init_value`` to ``min_value`` over ``total_steps``, then constant.

    Equals torch ``CosineAnnealingLR(T_max=total_steps, eta_min=min_value)`` for
    ``t <= total_steps``; unlike torch it stays at ``min_value`` afterwards instead of rising.
    """
    total_steps = _require_int("total_steps", total_steps, 1)
    if init_value == 0.0:
        # optax expresses the floor as a fraction of init_value, which is undefined here.
        if min_value != 0.0:
            raise ValueError(f"min_value must be 0 when init_value is 0, got {min_value}")
        return optax.constant_schedule(0.0)
    return optax.cosine_decay_schedule(
        init_value, decay_steps=total_steps, alpha=min_value / init_value
    )


def cosine_warm_restarts(
    init_value: float, first_period: int, period_multiplier: int = 1, min_value: float = 0.0
) -> optax.Schedule:
    """SGDR cosine annealing with warm restarts, equal to torch ``CosineAnnealingWarmRestarts``.

    Period ``i`` lasts ``first_period * period_multiplier**i`` steps; within it the value goes
    ``min_value + (init_value - min_value) * (1 + cos(pi * T_cur / T_i)) / 2``. Negative steps
    give ``init_value``. The period index is found in integer (int32 unless x64) arithmetic, so
    steps need ``first_period * period_multiplier**(n + 1) < 2**31`` in the current period ``n``.
    """
    first_period = _require_int("first_period", first_period, 1)
    multiplier = _require_int("period_multiplier", period_multiplier, 1)
    int_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)

    def period_start(n: jax.Array) -> jax.Array:
        """First step of period ``n`` (int): ``first_period * (m**n - 1) / (m - 1)``."""
        return first_period * (multiplier**n - 1) // (multiplier - 1)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.maximum(jnp.asarray(step).astype(int_dtype), 0)
        if multiplier == 1:
            t_cur, t_i = t % first_period, first_period
        else:
            ratio = t.astype(jnp.float32) / first_period * (multiplier - 1)
            estimate = jnp.floor(jnp.log1p(ratio) / math.log(multiplier)).astype(int_dtype)
            # The float log can land one period off near a boundary; correct it exactly in ints.
            n = jnp.maximum(estimate, 0)
            n = jnp.where(period_start(n) > t, n - 1, n)
            n = jnp.where(period_start(n + 1) <= t, n + 1, n)
            t_cur, t_i = t - period_start(n), first_period * multiplier**n
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * t_cur.astype(jnp.float32) / t_i))
        return min_value + (init_value - min_value) * cosine

    return schedule


def with_linear_warmup(
    schedule: optax.Schedule, warmup_steps: int, init_value: float = 0.0
) -> optax.Schedule:
    """Ramp linearly from ``init_value`` to ``schedule(0)`` over ``warmup_steps``, then follow
    ``schedule(t - warmup_steps)``. ``warmup_steps == 0`` returns ``schedule`` unchanged."""
    warmup_steps = _require_int("warmup_steps", warmup_steps, 0)
    if warmup_steps == 0:
        return schedule
    warmup = optax.linear_schedule(init_value, float(schedule(0)), warmup_steps)
    return optax.join_schedules([warmup, schedule], [warmup_steps])


def stepped_per_epoch(schedule: optax.Schedule, steps_per_epoch: int) -> optax.Schedule:
    """``schedule`` held constant within each epoch, at its value at the epoch's first step.

    ``t -> schedule(steps_per_epoch * (t // steps_per_epoch))``: the learning rate of a torch
    scheduler whose ``step()`` is called once per epoch (the usual ``ExponentialLR`` /
    ``CosineAnnealingLR`` loop), and Keras' ``staircase=True``.
    """
    steps_per_epoch = _require_int("steps_per_epoch", steps_per_epoch, 1)

    def held(step: jax.typing.ArrayLike) -> jax.Array:
        return schedule(jnp.asarray(step) // steps_per_epoch * steps_per_epoch)

    return held


def _epochs_to_steps(name: str, epochs: float, steps_per_epoch: int) -> int:
    """Convert a duration in (possibly fractional) epochs to a whole number of steps, >= 1."""
    if not math.isfinite(epochs) or epochs <= 0:
        raise ValueError(f"{name} must be a finite number of epochs > 0, got {epochs}")
    return max(1, round(epochs * steps_per_epoch))


def _duration(
    config: ml_collections.ConfigDict, base: str, steps_per_epoch: int, schedule_name: str | None
) -> int:
    """A duration given as ``<base>_epochs`` or ``<base>_steps`` (not both), in whole steps.

    With ``schedule_name`` set the duration is required; otherwise a missing one is 0.
    """
    epochs, steps = config.get(f"{base}_epochs"), config.get(f"{base}_steps")
    if epochs is not None and steps is not None and epochs != 0 and steps != 0:
        raise ValueError(f"set either {base}_epochs or {base}_steps, not both")
    if steps is not None and steps != 0:
        return _require_int(f"{base}_steps", steps, 1)
    if epochs is not None and epochs != 0:
        return _epochs_to_steps(f"{base}_epochs", epochs, steps_per_epoch)
    if schedule_name is not None:
        raise ValueError(
            f"schedule '{schedule_name}' requires config field '{base}_epochs' or '{base}_steps'"
        )
    return 0


def _required(config: ml_collections.ConfigDict, field: str, schedule_name: str) -> float:
    """Fetch a field that the named schedule cannot do without."""
    value = config.get(field)
    if value is None:
        raise ValueError(f"schedule '{schedule_name}' requires config field '{field}'")
    return value


def reject_unknown_fields(
    config: ml_collections.ConfigDict, known: frozenset[str], section: str
) -> None:
    """A misspelt field in a config file would otherwise be silently ignored."""
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ValueError(f"unknown {section} field(s) {unknown}; valid fields: {sorted(known)}")


# Every field build_schedule reads.
SCHEDULE_FIELDS = frozenset(
    [
        "name",
        "warmup_epochs",
        "warmup_steps",
        "min_value",
        "step_size_epochs",
        "step_size_steps",
        "gamma",
        "first_period_epochs",
        "first_period_steps",
        "period_multiplier",
        "staircase",
    ]
)


def build_schedule(
    config: ml_collections.ConfigDict,
    *,
    base_learning_rate: float,
    steps_per_epoch: int,
    total_steps: int,
) -> optax.Schedule:
    """Build the learning-rate schedule described by a config section.

    Fields: ``name`` (one of ``SCHEDULE_NAMES``), ``warmup_epochs`` (default 0), ``min_value``
    (cosine variants, default 0), ``step_size_epochs`` + ``gamma`` (step), ``gamma`` per epoch
    (exponential), ``first_period_epochs`` + ``period_multiplier`` (cosine_warm_restarts,
    multiplier default 1). Every duration may be given in steps instead (``warmup_steps``,
    ``step_size_steps``, ``first_period_steps``); epochs are rounded to whole steps (>= 1).
    The main schedule starts after warm-up; 'cosine' reaches ``min_value`` at ``total_steps``.

    ``staircase`` (default False, any name but 'constant') changes the rate only at epoch
    boundaries (epochs counted from the end of warm-up), as a torch scheduler stepped once per
    epoch: 'exponential' is then ``ExponentialLR(gamma)`` stepped per epoch, exactly.
    """
    steps_per_epoch = _require_int("steps_per_epoch", steps_per_epoch, 1)
    total_steps = _require_int("total_steps", total_steps, 1)
    reject_unknown_fields(config, SCHEDULE_FIELDS, "schedule")
    name = config.get("name")
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule name {name!r}; expected one of {SCHEDULE_NAMES}")

    warmup_steps = _duration(config, "warmup", steps_per_epoch, None)
    decay_steps = total_steps - warmup_steps
    if decay_steps < 1:
        raise ValueError(f"warm-up ({warmup_steps} steps) must be shorter than {total_steps=}")
    min_value = config.get("min_value", 0.0)
    staircase = config.get("staircase", False)
    if not isinstance(staircase, bool):
        raise ValueError(f"schedule field 'staircase' must be True or False, got {staircase!r}")
    if staircase and name == "constant":
        raise ValueError("schedule 'constant' has no steps: staircase=True would have no effect")

    if name == "constant":
        main = constant(base_learning_rate)
    elif name == "step":
        main = step_decay(
            base_learning_rate,
            _duration(config, "step_size", steps_per_epoch, name),
            _required(config, "gamma", name),
        )
    elif name == "exponential":
        gamma_per_epoch = _require_positive("gamma", _required(config, "gamma", name))
        if staircase:  # gamma ** (t // steps_per_epoch), exact rather than a held smooth decay
            main = step_decay(base_learning_rate, steps_per_epoch, gamma_per_epoch)
        else:
            main = exponential_decay(base_learning_rate, gamma_per_epoch ** (1.0 / steps_per_epoch))
    elif name == "cosine":
        main = cosine_annealing(base_learning_rate, decay_steps, min_value)
    else:
        main = cosine_warm_restarts(
            base_learning_rate,
            _duration(config, "first_period", steps_per_epoch, name),
            config.get("period_multiplier", 1),
            min_value,
        )
    if staircase and name != "exponential":
        main = stepped_per_epoch(main, steps_per_epoch)
    return with_linear_warmup(main, warmup_steps)
