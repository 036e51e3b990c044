"""Small shared fixtures' building blocks for the training tests."""

from jaxdl.config import load_config

TINY_OVERRIDES = (
    "--config.model.width=8",
    "--config.checkpoint.max_to_keep=3",
    "--config.logging.every_steps=5",
)


def tiny_digits_config(epochs: int = 3, *overrides: str):
    """The default experiment shrunk to a ResNet-8 of width 8 for a few epochs (seconds on CPU)."""
    return load_config(
        f"experiments/digits_resnet.py:depth=8,epochs={epochs}", [*TINY_OVERRIDES, *overrides]
    )


def assert_same_training(losses, ref_losses, params, ref_params) -> None:
    """Two runs trained alike: the loss moved, losses and parameters agree.

    Tolerances: the same maths in f32 with other reduction orders (all-reduce trees, split
    matmuls) differs by a few ulps per op; a few steps keep that well below these bounds.
    """
    import jax
    import numpy as np

    assert ref_losses[0] != ref_losses[-1]  # a real update happened
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5),
        params,
        ref_params,
    )
