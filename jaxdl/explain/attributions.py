"""Input attributions of image classifiers: vanilla gradients, SmoothGrad, integrated gradients.

Each explains the logit of a target class (default: the predicted one) and returns an array
shaped like the inputs [B, H, W, C]; ``heatmap`` reduces it over channels for display. All are
jitted; ``logits_fn`` is a ``Classifier`` (compiled once per model) or any function of images.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdl.explain.classifier import LogitsFn, as_logits_fn, class_scores


def _input_gradient(logits_fn: LogitsFn, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """d(target logit)/d(input) per example."""
    return jax.grad(lambda x: class_scores(logits_fn, x, targets).sum())(inputs)


def _targets_or_predicted(
    logits_fn: LogitsFn, inputs: jax.Array, targets: jax.Array | None
) -> jax.Array:
    if targets is None:
        return jnp.argmax(logits_fn(inputs), axis=-1)
    return jnp.asarray(targets, jnp.int32)


@jax.jit
def _vanilla_gradient(logits_fn, inputs, targets):
    return _input_gradient(logits_fn, inputs, _targets_or_predicted(logits_fn, inputs, targets))


def vanilla_gradient(
    logits_fn: LogitsFn, inputs: jax.Array, targets: jax.Array | None = None
) -> jax.Array:
    """The gradient of the target logit w.r.t. the input (Simonyan et al. 2013's saliency)."""
    return _vanilla_gradient(as_logits_fn(logits_fn), jnp.asarray(inputs, jnp.float32), targets)


@functools.partial(jax.jit, static_argnames=("samples",))
def _smoothgrad(logits_fn, inputs, targets, key, noise, samples):
    targets = _targets_or_predicted(logits_fn, inputs, targets)
    axes = tuple(range(1, inputs.ndim))
    spread = inputs.max(axis=axes, keepdims=True) - inputs.min(axis=axes, keepdims=True)
    sigma = noise * jnp.where(spread > 0, spread, 1.0)

    def add(total, sample_key):
        noisy = inputs + sigma * jax.random.normal(sample_key, inputs.shape, inputs.dtype)
        return total + _input_gradient(logits_fn, noisy, targets), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(inputs), jax.random.split(key, samples))
    return total / samples


def smoothgrad(
    logits_fn: LogitsFn,
    inputs: jax.Array,
    targets: jax.Array | None = None,
    *,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over ``samples`` copies of the input
    with Gaussian noise of std ``noise`` times each example's value range (seeded). The targets
    are the clean inputs' predictions, so every noisy copy explains the same class."""
    if samples < 1:
        raise ValueError(f"smoothgrad needs samples >= 1, got {samples}")
    if noise < 0:
        raise ValueError(f"smoothgrad noise must be >= 0, got {noise}")
    inputs = jnp.asarray(inputs, jnp.float32)
    key = jax.random.key(seed)
    return _smoothgrad(as_logits_fn(logits_fn), inputs, targets, key, noise, samples)


@functools.partial(jax.jit, static_argnames=("steps",))
def _integrated_gradients(logits_fn, inputs, targets, baseline, steps):
    targets = _targets_or_predicted(logits_fn, inputs, targets)
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    # Trapezoid weights: the end points count half.
    weights = jnp.ones(steps + 1).at[0].set(0.5).at[-1].set(0.5) / steps
    delta = inputs - baseline

    def add(total, alpha_weight):
        alpha, weight = alpha_weight
        return total + weight * _input_gradient(logits_fn, baseline + alpha * delta, targets), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(inputs), (alphas, weights))
    return delta * total


def integrated_gradients(
    logits_fn: LogitsFn,
    inputs: jax.Array,
    targets: jax.Array | None = None,
    *,
    baseline: jax.Array | float = 0.0,
    steps: int = 32,
) -> jax.Array:
    """Integrated gradients (Sundararajan et al. 2017): (x - baseline) times the path integral
    of the gradient from ``baseline`` to x, by the trapezoid rule over ``steps`` intervals.
    Sums to f(x) - f(baseline) for the target logit up to the quadrature error (completeness).
    The default baseline 0 is the mean image for standardised inputs."""
    if steps < 1:
        raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
    inputs = jnp.asarray(inputs, jnp.float32)
    baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), inputs.shape)
    return _integrated_gradients(as_logits_fn(logits_fn), inputs, targets, baseline, steps)


def heatmap(attribution: jax.Array, mode: str = "abs_max") -> jax.Array:
    """An attribution [..., H, W, C] as a map [..., H, W]: 'abs_max' (largest magnitude over
    channels, the saliency-map convention), 'abs_sum' or 'sum' (signed, for integrated
    gradients)."""
    attribution = jnp.asarray(attribution)
    if mode == "abs_max":
        return jnp.abs(attribution).max(axis=-1)
    if mode == "abs_sum":
        return jnp.abs(attribution).sum(axis=-1)
    if mode == "sum":
        return attribution.sum(axis=-1)
    raise ValueError(f"heatmap mode must be 'abs_max', 'abs_sum' or 'sum', got {mode!r}")
