"""Model families, registered by name (see ``get_model``/``available_models``).

The blocks (BasicBlock, Bottleneck, TransformerBlock, TransformerStack) are defined in
``jaxdl.layers`` and re-exported here.
"""

from jaxdl.layers import BasicBlock, Bottleneck, TransformerBlock, TransformerStack
from jaxdl.models.alexnet import AlexNet
from jaxdl.models.cnn import VGG, LeNet5
from jaxdl.models.ctc_decoding import (
    CharNgramLM,
    LexiconWordLM,
    beam_search_batch,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
)
from jaxdl.models.deeplab import DeepLabV3
from jaxdl.models.densenet import DenseNet
from jaxdl.models.efficientnet import EfficientNet
from jaxdl.models.mobilenet import MobileNetV2, MobileNetV3
from jaxdl.models.registry import available_models, get_model, register_model
from jaxdl.models.resnet import ResNet
from jaxdl.models.rnn import RNNClassifier
from jaxdl.models.speech import CRNNCTC, BiLSTMCTC, ConformerCTC
from jaxdl.models.transformer import TransformerClassifier, TransformerLM, TransformerMaskedLM
from jaxdl.models.unet import UNet

__all__ = [
    "AlexNet",
    "CRNNCTC",
    "VGG",
    "BasicBlock",
    "BiLSTMCTC",
    "Bottleneck",
    "CharNgramLM",
    "ConformerCTC",
    "DeepLabV3",
    "DenseNet",
    "EfficientNet",
    "LeNet5",
    "LexiconWordLM",
    "MobileNetV2",
    "MobileNetV3",
    "RNNClassifier",
    "ResNet",
    "TransformerBlock",
    "TransformerClassifier",
    "TransformerLM",
    "TransformerMaskedLM",
    "TransformerStack",
    "UNet",
    "available_models",
    "beam_search_batch",
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "get_model",
    "register_model",
]
