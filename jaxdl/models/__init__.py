"""Image model families, registered by name (see ``get_model``/``available_models``)."""

from jaxdl.models.cnn import VGG, LeNet5
from jaxdl.models.registry import available_models, get_model, register_model
from jaxdl.models.resnet import BasicBlock, Bottleneck, ResNet
from jaxdl.models.transformer import (
    TransformerBlock,
    TransformerClassifier,
    TransformerLM,
    TransformerStack,
)

__all__ = [
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "LeNet5",
    "ResNet",
    "TransformerBlock",
    "TransformerClassifier",
    "TransformerLM",
    "TransformerStack",
    "available_models",
    "get_model",
    "register_model",
]
