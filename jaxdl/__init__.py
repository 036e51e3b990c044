"""jaxdl: JAX/Flax deep learning for image, text and speech recognition on any device mesh."""

__version__ = "0.1.0"
