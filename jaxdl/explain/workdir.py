"""``jaxdl explain`` and ``jaxdl robustness`` over a trained run: the split's first examples
(or given texts), explained as PNG overlays or an HTML page of coloured tokens plus a JSON of
scores, or accuracy under FGSM/PGD at several radii.

Both start from the run's deployment function (``jaxdl.export.experiment_inference``), so they
explain and attack the model that ``predict`` and the exports compute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.data.text_sources import TokenizedText
from jaxdl.errors import UserError
from jaxdl.explain.adversarial import adversarial_accuracy
from jaxdl.explain.attention import attention_maps_by_layer
from jaxdl.explain.attributions import heatmap, integrated_gradients, smoothgrad, vanilla_gradient
from jaxdl.explain.classifier import Classifier, from_inference
from jaxdl.explain.gradcam import default_layer, gradcam, upsample
from jaxdl.explain.plots import plot_attention, plot_attribution
from jaxdl.explain.text import (
    render_token_html,
    text_classifier,
    token_gradient_x_input,
    token_integrated_gradients,
)
from jaxdl.export import experiment_inference
from jaxdl.export.inference import InferenceFunction, stack_inputs
from jaxdl.tasks.classification import ImageClassification, SequenceClassification

IMAGE_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")
# On a text classifier: gradient x input and integrated gradients of the token embeddings.
TEXT_METHODS = ("saliency", "integrated_gradients")
METHODS = (*IMAGE_METHODS, "attention")
EXPLANATIONS_FILENAME = "explanations.json"


def _first_examples(experiment, inference: InferenceFunction, split: str, count: int | None):
    """(input batch, labels or None) of the split's first ``count`` examples (all if None)."""
    source = experiment.data.get(split)
    total = len(source) if count is None else min(count, len(source))
    if total < 1:
        raise UserError(f"the {split} split has no examples")
    records = [source[i] for i in range(total)]
    labels = None
    if all("labels" in record for record in records):
        labels = np.asarray([int(record["labels"]) for record in records], np.int32)
    return stack_inputs(records, inference.input_spec), labels


def _encoded_texts(
    texts: Sequence[str], tokenizer: Any, task: SequenceClassification
) -> dict[str, np.ndarray]:
    """Token batch of ``texts`` encoded as the text loaders do (CLS first when the tokenizer
    has one, truncated and padded to the task's ``max_len``)."""
    if tokenizer is None:
        raise UserError("explaining given texts needs the run's tokenizer")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise UserError("no non-empty texts to explain")
    add_cls = getattr(tokenizer, "cls_id", None) is not None
    encoded = TokenizedText([{"text": t} for t in texts], tokenizer, task.max_len, add_cls)
    return {"tokens": np.stack([encoded[i]["tokens"] for i in range(len(texts))])}


def _class_name(names: Sequence[str] | None, index: int | None) -> str | None:
    if index is None:
        return None
    return str(names[index]) if names is not None and index < len(names) else str(index)


def _attribution_maps(
    method: str, model: Classifier, images: jax.Array, options: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """(maps [B, H, W] to overlay, extra JSON fields: per-example lists or run-level values)."""
    if method == "saliency":
        return np.asarray(heatmap(vanilla_gradient(model, images))), {}
    if method == "smoothgrad":
        keys = ("samples", "noise", "seed")
        grads = smoothgrad(model, images, **{k: options[k] for k in keys if k in options})
        return np.asarray(heatmap(grads)), {}
    if method == "integrated_gradients":
        steps = int(options.get("steps", 32))
        attributions = integrated_gradients(model, images, steps=steps)
        logits, base = model(images), model(jnp.zeros_like(images))
        targets = jnp.argmax(logits, axis=-1)[:, None]
        difference = (
            jnp.take_along_axis(logits, targets, -1) - jnp.take_along_axis(base, targets, -1)
        )[:, 0]
        extra = {
            "attribution_sum": np.asarray(attributions.sum(axis=(1, 2, 3))).tolist(),
            "score_minus_baseline_score": np.asarray(difference).tolist(),
            "steps": steps,
        }
        return np.asarray(heatmap(attributions, "abs_sum")), extra
    layer = options.get("layer") or default_layer(model, images)
    maps = upsample(gradcam(model, images, layer=layer), images.shape[1:3])
    return np.asarray(maps), {"layer": layer}


def _token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token id as text (its decoding when a tokenizer is given, else the id)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    labels = []
    for token in ids:
        if getattr(tokenizer, "cls_id", None) == int(token):
            labels.append("[CLS]")
            continue
        try:
            labels.append(tokenizer.decode([int(token)]) or f"<{token}>")
        except Exception:  # an id the tokenizer cannot decode alone (e.g. a byte fragment)
            labels.append(f"<{token}>")
    return labels


def _token_attributions(
    method: str, inference: InferenceFunction, tokens: np.ndarray, options: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(attributions [B, T] with 0 at padding, padding mask [B, T], extra JSON fields)."""
    task = inference.task
    model = text_classifier(inference.model, inference.variables)
    mask = np.asarray(tokens != task.pad_id)
    common = {"padding_mask": mask, "pad_id": task.pad_id}
    if method == "saliency":
        scores = token_gradient_x_input(model, tokens, **common)
        return np.asarray(scores), mask, {"attribution": "gradient_x_input"}
    baseline, steps = options["baseline"], int(options["steps"])
    scores, gap = token_integrated_gradients(
        model, tokens, baseline=baseline, steps=steps, **common
    )
    extra = {
        "attribution": "integrated_gradients",
        "baseline": f"{baseline} embedding",
        "steps": steps,
        "attribution_sum": np.asarray(scores).sum(-1).tolist(),
        "score_minus_baseline_score": np.asarray(gap).tolist(),
    }
    return np.asarray(scores), mask, extra


def explain_experiment(
    experiment: Any,
    state: Any,
    *,
    method: str,
    out_dir: str,
    split: str = "test",
    count: int = 8,
    layer: str | None = None,
    samples: int = 16,
    noise: float = 0.15,
    steps: int = 32,
    seed: int = 0,
    tokenizer: Any = None,
    texts: Sequence[str] | None = None,
    baseline: str = "zero",
) -> dict[str, Any]:
    """Explain the first ``count`` examples of ``split`` (or ``texts``, encoded with
    ``tokenizer``, for a text classifier) with ``method`` (one of ``METHODS``) and write
    ``explanations.json`` to ``out_dir`` (per example: label, prediction, its probability, its
    rendering; integrated gradients add the completeness check). Every method explains the
    predicted class.

    Image classifiers: one PNG overlay per example (``{split}_{i:04d}_{method}.png``).
    Text classifiers: 'saliency' (gradient x input) or 'integrated_gradients' (from the
    ``baseline`` token embedding, 'zero' or 'pad') per token of the token-embedding output
    (``jaxdl.explain.text``): the JSON lists each example's real tokens and scores, and
    ``{split}_{method}.html`` shows the tokens coloured by score. 'attention' plots each
    layer's head-averaged weights over the real tokens (decoded with ``tokenizer`` if given)
    and saves all weights [layers, B, heads, T, T] in ``attention_{split}.npz``. With
    ``texts``, ``split`` in names and the JSON is 'inputs'. Returns the JSON written."""
    if method not in METHODS:
        raise UserError(f"unknown explain method {method!r}; choose one of {list(METHODS)}")
    inference = experiment_inference(experiment, state)
    task = inference.task
    text = isinstance(task, SequenceClassification)
    allowed = (*TEXT_METHODS, "attention") if text else ()
    allowed = IMAGE_METHODS if isinstance(task, ImageClassification) else allowed
    if method not in allowed:
        choices = ", ".join(allowed) or "none"
        raise UserError(f"{method} does not explain a {task.name} run (methods for it: {choices})")
    if texts is not None:
        if not text:
            raise UserError(f"only text classifiers explain given texts, not a {task.name} run")
        batch, labels, split = _encoded_texts(texts, tokenizer, task), None, "inputs"
    else:
        batch, labels = _first_examples(experiment, inference, split, count)
    probabilities = inference(batch)["probabilities"]
    predicted = probabilities.argmax(-1)
    names = experiment.data.info.get("class_names")
    os.makedirs(out_dir, exist_ok=True)

    report: dict[str, Any] = {"method": method, "split": split, "examples": []}
    if method == "attention":
        args, kwargs = task.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
        try:
            by_layer = attention_maps_by_layer(
                inference.model, inference.variables, *args, **kwargs
            )
        except ValueError as error:  # a model without attention layers (an RNN)
            raise UserError(str(error)) from None
        stacked = np.stack([np.asarray(w) for w in by_layer.values()])
        np.savez_compressed(os.path.join(out_dir, f"attention_{split}.npz"), weights=stacked)
        report["layers"] = list(by_layer)
        mask = np.asarray(kwargs.get("padding_mask", np.ones(args[0].shape, bool)))
    elif text:
        options = {"baseline": baseline, "steps": steps}
        scores, mask, extra = _token_attributions(method, inference, batch["tokens"], options)
        report.update({k: v for k, v in extra.items() if not isinstance(v, list)})
        report["html"] = f"{split}_{method}.html"
        rendered = []
    else:
        options = {"layer": layer, "samples": samples, "noise": noise, "steps": steps, "seed": seed}
        images = jnp.asarray(batch["inputs"])
        maps, extra = _attribution_maps(method, from_inference(inference), images, options)
        report.update({k: v for k, v in extra.items() if not isinstance(v, list)})

    for i in range(len(predicted)):
        label = None if labels is None else int(labels[i])
        guess = int(predicted[i])
        title = f"predicted {_class_name(names, guess)} ({probabilities[i, guess]:.2f})"
        if label is not None:
            title = f"label {_class_name(names, label)}, {title}"
        entry = {
            "index": i,
            "label": label,
            "label_name": _class_name(names, label),
            "predicted": guess,
            "predicted_name": _class_name(names, guess),
            "probability": float(probabilities[i, guess]),
        }
        png = os.path.join(out_dir, f"{split}_{i:04d}_{method}.png")
        if text and method != "attention":
            real = np.flatnonzero(mask[i])
            tokens = _token_labels(tokenizer, np.asarray(batch["tokens"][i])[real])
            entry.update(tokens=tokens, scores=scores[i, real].tolist())
            rendered.append((f"{i}: {title}", tokens, entry["scores"]))
        elif method == "attention":
            real = np.flatnonzero(mask[i])
            tokens = _token_labels(tokenizer, np.asarray(batch["tokens"][i])[real])
            panels = stacked[:, i].mean(axis=1)[:, real][:, :, real]
            titles = [f"layer {n} (head mean)" for n in range(len(panels))]
            plot_attention(tokens, panels, png, titles=titles)
            entry["png"] = os.path.basename(png)
        else:
            plot_attribution(batch["inputs"][i], maps[i], png, title=f"{method}: {title}")
            entry["png"] = os.path.basename(png)
        if method != "attention":
            entry.update({k: v[i] for k, v in extra.items() if isinstance(v, list)})
        report["examples"].append(entry)
    if text and method != "attention":
        heading = f"{report['attribution']} of the predicted class, {split}"
        render_token_html(rendered, os.path.join(out_dir, report["html"]), title=heading)
    with open(os.path.join(out_dir, EXPLANATIONS_FILENAME), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


def input_box(info: Mapping[str, Any], inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of valid model inputs: pixels 0..1 standardised with the data's
    ``channel_mean``/``channel_std`` when recorded, else the range of ``inputs`` itself."""
    if info.get("channel_mean") is not None and info.get("channel_std") is not None:
        mean = np.asarray(info["channel_mean"], np.float32)
        std = np.asarray(info["channel_std"], np.float32)
        return (0.0 - mean) / std, (1.0 - mean) / std
    axes = tuple(range(inputs.ndim - 1))
    return inputs.min(axis=axes), inputs.max(axis=axes)


def robustness_experiment(
    experiment: Any,
    state: Any,
    *,
    epsilons: Sequence[float],
    split: str = "test",
    count: int | None = 1000,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 128,
    out: str | None = None,
) -> dict[str, Any]:
    """Accuracy of an image classifier on the first ``count`` examples of ``split`` (all if
    None), clean and under each attack at each epsilon. Epsilon is a fraction of each channel's
    valid input range (``input_box``; pixel units for 0..1 images), and attacked inputs stay in
    that range. PGD: ``steps`` steps of 2.5 * epsilon / steps from a seeded random start.
    Writes the report as JSON to ``out`` when given; returns it."""
    inference = experiment_inference(experiment, state)
    if not isinstance(inference.task, ImageClassification):
        raise UserError(f"robustness attacks image classifiers, not a {inference.task.name} run")
    batch, labels = _first_examples(experiment, inference, split, count)
    if labels is None:
        raise UserError(f"the {split} split has no labels to score attacks against")
    inputs = batch["inputs"]
    low, high = input_box(experiment.data.info, inputs)
    model = from_inference(inference)
    common = {"batch_size": batch_size, "clip_min": low, "clip_max": high, "scale": high - low}
    clean = adversarial_accuracy(model, inputs, labels, [0.0], **common)[0.0]
    results = {}
    for attack in attacks:
        options = {"steps": steps, "seed": seed} if attack == "pgd" else {}
        results[attack] = adversarial_accuracy(
            model, inputs, labels, epsilons, attack=attack, **common, **options
        )
    report = {
        "split": split,
        "examples": len(labels),
        "epsilon_units": "fraction of each channel's valid input range",
        "input_low": np.asarray(low).tolist(),
        "input_high": np.asarray(high).tolist(),
        "clean_accuracy": clean,
        "pgd": {
            "steps": steps,
            "step_size": "2.5 * epsilon / steps",
            "random_start": True,
            "seed": seed,
        },
        "rows": [
            {"epsilon": float(e), **{a: results[a][float(e)] for a in attacks}} for e in epsilons
        ],
    }
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def robustness_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table: one row per epsilon, one accuracy column per attack."""
    attacks = [key for key in report["rows"][0] if key != "epsilon"] if report["rows"] else []
    lines = [
        f"clean accuracy {report['clean_accuracy']:.4f} on {report['examples']} "
        f"{report['split']} examples (epsilon: {report['epsilon_units']})",
        "| epsilon | " + " | ".join(f"{a} accuracy" for a in attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for row in report["rows"]:
        cells = " | ".join(f"{row[a]:.4f}" for a in attacks)
        lines.append(f"| {row['epsilon']:g} | {cells} |")
    return "\n".join(lines)
