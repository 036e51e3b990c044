"""Build an optax optimiser (clipping, regularisation, update rule, weight decay) from a config.

The learning rate comes from an `optax.Schedule`; the optimiser evaluates it at its own update
count (0 for the first update). To log the current learning rate, the trainer calls
``schedule(step)`` with the number of updates applied so far — no value is stored in the state.

Weight-decay scope: by default ``weight_decay`` and ``l1`` touch only kernels (ndim >= 2), not
biases or norm scales/offsets. ``decay_bias_and_norm=True`` decays every parameter, which is what
``torch.optim.SGD(model.parameters(), weight_decay=...)`` (or ``Adam``/``AdamW``) does.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdl.optim.pruning import build_pruning
from jaxdl.optim.schedules import reject_unknown_fields

OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def decay_kernels_only(params: optax.Params) -> optax.Params:
    """Weight-decay mask: True for kernels (ndim >= 2), False for biases and norm scales/offsets."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def l1_regularization(strength: float) -> optax.GradientTransformation:
    """Add the L1 penalty gradient ``strength * sign(param)`` to each update.

    Written by hand because optax has no L1 counterpart of `optax.add_decayed_weights`.
    """

    def add_l1_gradient(updates: optax.Updates, params: optax.Params | None) -> optax.Updates:
        if params is None:
            raise ValueError("l1 regularisation needs params: call update(grads, state, params)")
        return jax.tree.map(lambda g, p: g + strength * jnp.sign(p), updates, params)

    return optax.stateless(add_l1_gradient)


def _is_number(value: object) -> bool:
    """True for real numbers other than bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(
    config: ml_collections.ConfigDict,
    field: str,
    default: float,
    low: float,
    high: float = math.inf,
) -> float:
    """Fetch a numeric field (``default`` when absent) and check ``low <= value < high``."""
    value = config.get(field, default)
    if not (_is_number(value) and low <= value < high):
        raise ValueError(f"optimizer field '{field}' must be in [{low}, {high}), got {value!r}")
    return float(value)


def _optional_positive(config: ml_collections.ConfigDict, field: str) -> float | None:
    """Fetch a field that is either None (disabled, the default) or a number > 0."""
    value = config.get(field)
    if value is not None and not (_is_number(value) and value > 0):
        raise ValueError(f"optimizer field '{field}' must be None or > 0, got {value!r}")
    return value


def _update_rule(config: ml_collections.ConfigDict, name: str) -> optax.GradientTransformation:
    """The optimiser's update direction before the learning rate is applied (torch semantics)."""
    if name == "sgd":
        momentum = _number(config, "momentum", 0.0, 0.0)
        nesterov = bool(config.get("nesterov", False))
        if nesterov and momentum == 0:
            raise ValueError("optimizer field 'nesterov' requires momentum > 0")
        return optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity()
    if name in ("adam", "adamw"):
        return optax.scale_by_adam(
            b1=_number(config, "b1", 0.9, 0.0, 1.0),
            b2=_number(config, "b2", 0.999, 0.0, 1.0),
            eps=_number(config, "eps", 1e-8, 0.0),
        )
    # rmsprop, as torch.optim.RMSprop: eps outside the sqrt, momentum applied before the lr.
    momentum = _number(config, "momentum", 0.0, 0.0)
    scale = optax.scale_by_rms(
        decay=_number(config, "decay", 0.99, 0.0, 1.0),
        eps=_number(config, "eps", 1e-8, 0.0),
        eps_in_sqrt=False,
    )
    return optax.chain(scale, optax.trace(decay=momentum)) if momentum else scale


# Every field build_optimizer reads (learning_rate is the schedule's base value).
OPTIMIZER_FIELDS = frozenset(
    [
        "name",
        "learning_rate",
        "momentum",
        "nesterov",
        "b1",
        "b2",
        "eps",
        "decay",
        "weight_decay",
        "weight_decay_mode",
        "l1",
        "clip_global_norm",
        "clip_value",
        "decay_bias_and_norm",
        "pruning",
    ]
)


def build_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Build the optimiser described by a config section, with learning rate ``schedule``.

    Fields (all but ``name`` optional): ``name`` in ``OPTIMIZER_NAMES``; ``momentum`` (sgd,
    rmsprop; default 0); ``nesterov`` (sgd); ``b1``, ``b2``, ``eps`` (adam/adamw; torch defaults);
    ``decay`` (rmsprop alpha, default 0.99) and ``eps``; ``weight_decay`` (default 0);
    ``weight_decay_mode`` ('coupled' = L2 added to the gradient as torch's ``weight_decay``,
    'decoupled' = AdamW-style decay scaled by the lr; default 'decoupled' for adamw, else
    'coupled'); ``l1`` (default 0); ``clip_global_norm`` and ``clip_value`` (None = off);
    ``decay_bias_and_norm`` (default False: decay and L1 only touch kernels with ndim >= 2; True
    decays every parameter, as torch's ``weight_decay`` on ``model.parameters()`` does);
    ``pruning`` (optional sub-config, see ``jaxdl.optim.pruning.build_pruning``: magnitude
    pruning of kernels; absent or ``sparsity=0``: none).

    Chain: clip by value -> clip by global norm -> L1 / coupled L2 -> update rule ->
    decoupled decay -> scale by ``-schedule(count)`` -> pruning masks. ``update`` must be given
    params.
    """
    reject_unknown_fields(config, OPTIMIZER_FIELDS, "optimizer")
    name = config.get("name")
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer name {name!r}; expected one of {OPTIMIZER_NAMES}")
    weight_decay = _number(config, "weight_decay", 0.0, 0.0)
    mode = config.get("weight_decay_mode", "decoupled" if name == "adamw" else "coupled")
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"unknown weight_decay_mode {mode!r}; expected {WEIGHT_DECAY_MODES}")
    if name == "adamw" and mode == "coupled":
        raise ValueError("optimizer 'adamw' means decoupled weight decay; use 'adam' for coupled")
    l1 = _number(config, "l1", 0.0, 0.0)
    clip_global_norm = _optional_positive(config, "clip_global_norm")
    clip_value = _optional_positive(config, "clip_value")
    mask = None if config.get("decay_bias_and_norm", False) else decay_kernels_only
    pruning = build_pruning(config.get("pruning"))

    chain = []
    if clip_value is not None:
        chain.append(optax.clip(clip_value))
    if clip_global_norm is not None:
        chain.append(optax.clip_by_global_norm(clip_global_norm))
    if l1:
        l1_term = l1_regularization(l1)
        chain.append(l1_term if mask is None else optax.masked(l1_term, mask))
    if weight_decay and mode == "coupled":
        chain.append(optax.add_decayed_weights(weight_decay, mask))
    chain.append(_update_rule(config, name))
    if weight_decay and mode == "decoupled":
        chain.append(optax.add_decayed_weights(weight_decay, mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    if pruning is not None:
        chain.append(pruning)  # last, so no later transform can move a pruned weight
    return optax.chain(*chain)
