"""Input checks shared by the image models."""

import jax
import jax.numpy as jnp


def check_image_batch(x: jax.Array, model_name: str) -> None:
    """Raise a one-line error unless ``x`` is a float [batch, H, W, C] image batch."""
    if x.ndim != 4:
        raise ValueError(f"{model_name} expects images shaped [batch, H, W, C], got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model_name} expects floating-point images, got dtype {x.dtype}")
