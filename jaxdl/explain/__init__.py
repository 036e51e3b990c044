"""Explaining and attacking trained classifiers.

Attributions for image classifiers (vanilla gradients, SmoothGrad, integrated gradients,
Grad-CAM), token attributions for text classifiers (gradient x input, integrated gradients on
the token embeddings), attention maps of Transformers, FGSM/PGD attacks and accuracy under
attack, PNG overlays and HTML token highlights, and the ``jaxdl explain`` / ``jaxdl
robustness`` entry points over a trained workdir.
"""

from jaxdl.explain.adversarial import adversarial_accuracy, fgsm, pgd
from jaxdl.explain.attention import attention_maps, attention_maps_by_layer
from jaxdl.explain.attributions import (
    heatmap,
    integrated_gradients,
    smoothgrad,
    vanilla_gradient,
)
from jaxdl.explain.classifier import Classifier, class_scores, classifier, from_inference
from jaxdl.explain.gradcam import (
    default_layer,
    feature_map_layers,
    gradcam,
    layer_activations_and_gradients,
    upsample,
)
from jaxdl.explain.plots import plot_attention, plot_attribution
from jaxdl.explain.text import (
    TEXT_BASELINES,
    TextClassifier,
    render_token_html,
    text_classifier,
    token_gradient_x_input,
    token_integrated_gradients,
)
from jaxdl.explain.workdir import (
    METHODS,
    TEXT_METHODS,
    explain_experiment,
    input_box,
    robustness_experiment,
    robustness_table,
)

__all__ = [
    "METHODS",
    "TEXT_BASELINES",
    "TEXT_METHODS",
    "Classifier",
    "TextClassifier",
    "adversarial_accuracy",
    "attention_maps",
    "attention_maps_by_layer",
    "class_scores",
    "classifier",
    "default_layer",
    "explain_experiment",
    "feature_map_layers",
    "fgsm",
    "from_inference",
    "gradcam",
    "heatmap",
    "input_box",
    "integrated_gradients",
    "layer_activations_and_gradients",
    "pgd",
    "plot_attention",
    "plot_attribution",
    "render_token_html",
    "robustness_experiment",
    "robustness_table",
    "smoothgrad",
    "text_classifier",
    "token_gradient_x_input",
    "token_integrated_gradients",
    "upsample",
    "vanilla_gradient",
]
