"""Grad-CAM (Selvaraju et al. 2017) for CNN classifiers, without changing the models.

The chosen layer's output is intercepted (``flax.linen.intercept_methods``): it is recorded and
a zero perturbation is added to it, so the gradient of the class score w.r.t. the perturbation is
the gradient w.r.t. the activations. Layers are named by their module path ('stage3_block3',
'conv2', or 'a/b' for nested modules); the default is the last top-level submodule whose output
is a feature map [B, h, w, C] (a ResNet's last block, a VGG's or LeNet's last conv stage).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.explain.classifier import Classifier, class_scores


def _path(layer: str) -> tuple[str, ...]:
    return tuple(part for part in layer.split("/") if part)


def feature_map_layers(model: Classifier, inputs: jax.Array) -> list[str]:
    """The top-level submodules whose output is a feature map [B, h, w, C], in call order
    (found by tracing shapes only)."""
    found: list[str] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = context.module.path
        shaped = isinstance(out, jax.Array | jax.ShapeDtypeStruct) and out.ndim == 4
        top_level = context.method_name == "__call__" and len(path) == 1
        if top_level and shaped and path[0] not in found:
            found.append(path[0])
        return out

    def run(images):
        with nn.intercept_methods(record):
            return model(images)

    jax.eval_shape(run, jax.ShapeDtypeStruct(inputs.shape, jnp.float32))
    return found


def default_layer(model: Classifier, inputs: jax.Array) -> str:
    """The layer Grad-CAM explains by default: the last top-level feature-map module."""
    layers = feature_map_layers(model, inputs)
    if not layers:
        raise ValueError(f"{type(model.model).__name__} has no submodule with a feature-map output")
    return layers[-1]


def _forward_with_perturbation(model: Classifier, layer: tuple[str, ...], images, delta):
    """(logits, the layer's activations) with ``delta`` added to the layer's output (when
    ``delta`` is not None); raises if the layer is never called."""
    captured: list[jax.Array] = []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path == layer and not captured:
            captured.append(out)
            if delta is not None:
                out = out + delta.astype(out.dtype)
        return out

    with nn.intercept_methods(intercept):
        logits = model(images)
    if not captured:
        raise ValueError(f"layer {'/'.join(layer)!r} is not called by {type(model.model).__name__}")
    return logits, captured[0]


def layer_activations_and_gradients(
    model: Classifier, inputs: jax.Array, layer: str, targets: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(activations [B, h, w, C] of ``layer``, d(target logit)/d(activations), targets [B]);
    targets default to the predicted classes."""
    return _activations_and_gradients(model, jnp.asarray(inputs, jnp.float32), targets, layer)


@functools.partial(jax.jit, static_argnames=("layer",))
def _activations_and_gradients(model, inputs, targets, layer):
    path = _path(layer)
    logits, activations = _forward_with_perturbation(model, path, inputs, None)
    if targets is None:
        targets = jnp.argmax(logits, axis=-1)
    targets = jnp.asarray(targets, jnp.int32)

    def score(delta):
        perturbed = functools.partial(_forward_with_perturbation, model, path, delta=delta)
        return class_scores(lambda x: perturbed(x)[0], inputs, targets).sum()

    gradients = jax.grad(score)(jnp.zeros(activations.shape, jnp.float32))
    return activations.astype(jnp.float32), gradients, targets


def gradcam(
    model: Classifier,
    inputs: jax.Array,
    targets: jax.Array | None = None,
    *,
    layer: str | None = None,
) -> jax.Array:
    """Grad-CAM maps [B, h, w] at ``layer``'s resolution: ReLU(sum_k alpha_k A_k) with
    alpha_k the spatial mean of d(target logit)/dA_k. ``upsample`` brings them to the input
    size. ``layer`` defaults to ``default_layer``."""
    inputs = jnp.asarray(inputs, jnp.float32)
    layer = layer or default_layer(model, inputs)
    activations, gradients, _ = layer_activations_and_gradients(model, inputs, layer, targets)
    alphas = gradients.mean(axis=(1, 2), keepdims=True)
    return jax.nn.relu((alphas * activations).sum(axis=-1))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Maps [B, h, w] resized bilinearly to [B, *size] (to overlay them on the inputs)."""
    maps = jnp.asarray(maps, jnp.float32)
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")
