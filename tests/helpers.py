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
