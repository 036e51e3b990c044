"""L-infinity adversarial attacks (FGSM, PGD) and accuracy under attack.

Inputs are standardised, so the valid input box is an argument: ``clip_min``/``clip_max``
(scalars or arrays broadcastable to the inputs, e.g. per channel; None = unbounded), as is
``epsilon`` (same broadcasting: a per-channel radius for a pixel-space budget). Attacks raise the
softmax cross-entropy of the true labels and are jitted (``logits_fn`` as for the attributions).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.explain.classifier import LogitsFn, as_logits_fn
from jaxdl.tasks.classification import classification_loss

Bound = Any  # a float, an array broadcastable to the inputs, or None (unbounded)


def _loss_gradient(logits_fn: LogitsFn, inputs: jax.Array, labels: jax.Array) -> jax.Array:
    """d(summed cross-entropy)/d(inputs): each example's own loss gradient."""
    return jax.grad(lambda x: classification_loss(logits_fn(x), labels).sum())(inputs)


def _clip(x: jax.Array, clip_min: Bound, clip_max: Bound) -> jax.Array:
    if clip_min is not None:
        x = jnp.maximum(x, clip_min)
    if clip_max is not None:
        x = jnp.minimum(x, clip_max)
    return x


def _as_array(value: Bound) -> jax.Array | None:
    return None if value is None else jnp.asarray(value, jnp.float32)


@jax.jit
def _fgsm(logits_fn, inputs, labels, epsilon, clip_min, clip_max):
    step = epsilon * jnp.sign(_loss_gradient(logits_fn, inputs, labels))
    return _clip(inputs + step, clip_min, clip_max)


def fgsm(
    logits_fn: LogitsFn,
    inputs: jax.Array,
    labels: jax.Array,
    epsilon: Bound,
    *,
    clip_min: Bound = None,
    clip_max: Bound = None,
) -> jax.Array:
    """Fast gradient sign method (Goodfellow et al. 2015): clip(x + epsilon * sign(grad_x
    loss)) in one step."""
    return _fgsm(
        as_logits_fn(logits_fn),
        jnp.asarray(inputs, jnp.float32),
        jnp.asarray(labels, jnp.int32),
        jnp.asarray(epsilon, jnp.float32),
        _as_array(clip_min),
        _as_array(clip_max),
    )


@functools.partial(jax.jit, static_argnames=("steps", "random_start"))
def _pgd(
    logits_fn, inputs, labels, epsilon, step_size, key, clip_min, clip_max, steps, random_start
):
    def project(x):
        return _clip(jnp.clip(x, inputs - epsilon, inputs + epsilon), clip_min, clip_max)

    x = inputs
    if random_start:
        x = project(
            inputs + jax.random.uniform(key, inputs.shape, minval=-1.0, maxval=1.0) * epsilon
        )

    def step(x, _):
        x = x + step_size * jnp.sign(_loss_gradient(logits_fn, x, labels))
        return project(x), None

    x, _ = jax.lax.scan(step, x, None, length=steps)
    return x


def pgd(
    logits_fn: LogitsFn,
    inputs: jax.Array,
    labels: jax.Array,
    epsilon: Bound,
    *,
    steps: int = 10,
    step_size: Bound = None,
    random_start: bool = True,
    seed: int = 0,
    clip_min: Bound = None,
    clip_max: Bound = None,
) -> jax.Array:
    """Projected gradient descent (Madry et al. 2018) in the L-infinity ball of radius
    ``epsilon``: ``steps`` signed-gradient steps of ``step_size`` (default 2.5 * epsilon /
    steps), each projected back into the ball and the input box; optionally from a uniform
    random start in the ball (seeded)."""
    if steps < 1:
        raise ValueError(f"pgd needs steps >= 1, got {steps}")
    epsilon = jnp.asarray(epsilon, jnp.float32)
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    return _pgd(
        as_logits_fn(logits_fn),
        jnp.asarray(inputs, jnp.float32),
        jnp.asarray(labels, jnp.int32),
        epsilon,
        jnp.asarray(step_size, jnp.float32),
        jax.random.key(seed),
        _as_array(clip_min),
        _as_array(clip_max),
        steps,
        random_start,
    )


ATTACKS = {"fgsm": fgsm, "pgd": pgd}


@jax.jit
def _correct(logits_fn, inputs, labels):
    return jnp.sum(jnp.argmax(logits_fn(inputs), axis=-1) == labels)


def adversarial_accuracy(
    logits_fn: LogitsFn,
    inputs: np.ndarray,
    labels: np.ndarray,
    epsilons: Sequence[float],
    *,
    attack: str = "pgd",
    scale: Bound = 1.0,
    batch_size: int = 128,
    clip_min: Bound = None,
    clip_max: Bound = None,
    **attack_options: Any,
) -> dict[float, float]:
    """{epsilon: accuracy on the attacked ``inputs``} for each epsilon (0 gives clean accuracy),
    in batches of ``batch_size``. The attack radius is ``epsilon * scale`` (``scale``: e.g. each
    channel's value range, so epsilon is a fraction of it). ``attack_options`` go to the attack
    (``steps``, ``step_size``, ``random_start``, ``seed`` for PGD)."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {sorted(ATTACKS)}, got {attack!r}")
    if len(inputs) != len(labels) or not len(inputs):
        raise ValueError(f"need as many labels as inputs (> 0), got {len(labels)}, {len(inputs)}")
    fn = as_logits_fn(logits_fn)
    labels = np.asarray(labels, np.int32)
    results = {}
    for epsilon in epsilons:
        if epsilon < 0:
            raise ValueError(f"epsilons must be >= 0, got {epsilon}")
        radius = float(epsilon) * jnp.asarray(scale, jnp.float32)
        correct = 0
        for start in range(0, len(inputs), batch_size):
            x = jnp.asarray(inputs[start : start + batch_size], jnp.float32)
            y = jnp.asarray(labels[start : start + batch_size])
            if epsilon > 0:
                options = dict(clip_min=clip_min, clip_max=clip_max, **attack_options)
                x = ATTACKS[attack](fn, x, y, radius, **options)
            correct += int(_correct(fn, x, y))
        results[float(epsilon)] = correct / len(inputs)
    return results
