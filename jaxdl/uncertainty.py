"""``jaxdl uncertainty``: MC dropout over one trained run, or a deep ensemble of several.

Both give, per example of a split, several predictive distributions (one per dropout sample or
ensemble member) whose mean is the prediction. The report scores the mean (accuracy, NLL, ECE),
splits its uncertainty into total (predictive entropy) and epistemic (mutual information) parts,
and gives the accuracy left after rejecting the least certain examples, with PNG plots.

MC dropout (Gal & Ghahramani, 2016) runs the model in inference mode, so batch norm keeps
normalising with its running statistics and nothing is updated, and turns only the ``nn.Dropout``
layers back on (a flax method interceptor makes them sample a mask). The models' single
``train`` flag cannot do that: it would also switch batch norm to batch statistics. Dropout
inside fused attention kernels is not an ``nn.Dropout`` call in inference mode and stays off.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdl.data.records import RecordError
from jaxdl.errors import UserError
from jaxdl.export.inference import InferenceFunction, stack_inputs
from jaxdl.metrics.calibration import (
    expected_calibration_error,
    mutual_information,
    predictive_entropy,
    rejection_curve,
)
from jaxdl.metrics.plots import _new_figure, _save_png

REJECTION_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(11))  # 0, 5, .., 50 %
# Probabilities are clipped here before the log of the NLL: a float32 softmax can round to 0.
MIN_PROBABILITY = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- MC dropout


def _sample_dropout(rates: list[float]) -> Callable[..., Any]:
    """A flax interceptor that makes every deterministic ``nn.Dropout`` sample a mask (from the
    'dropout' rngs of the apply) and appends each such layer's rate to ``rates``."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        is_call = isinstance(module, nn.Dropout) and context.method_name == "__call__"
        if not is_call or module.deterministic is False:  # already sampling (or our sampler)
            return next_fun(*args, **kwargs)
        rates.append(float(module.rate))
        sampler = type(module)(
            module.rate,
            module.broadcast_dims,
            deterministic=False,
            rng_collection=module.rng_collection,
            parent=None,
        )
        key = module.make_rng(module.rng_collection)
        return sampler.apply({}, args[0], rngs={module.rng_collection: key})

    return intercept


def _sampled_probabilities(task: Any, model: nn.Module, variables: Any, inputs, key, rates):
    """Class probabilities of one MC-dropout pass over ``inputs`` (inference mode, dropout on)."""

    def forward(*args, **kwargs):
        return model.apply(variables, *args, train=False, rngs={"dropout": key}, **kwargs)

    with nn.intercept_methods(_sample_dropout(rates)):
        return task.serving_outputs(forward, inputs)["probabilities"]


@functools.partial(jax.jit, static_argnames=("task", "model"))
def _mc_dropout_passes(task: Any, model: nn.Module, variables: Any, inputs, keys) -> jax.Array:
    """Probabilities [len(keys), B, C], one MC-dropout pass per key, run one after another
    (the memory of one pass); compiled once per task, model and input shapes."""
    return jax.lax.map(
        lambda key: _sampled_probabilities(task, model, variables, inputs, key, []), keys
    )


def dropout_rates(task: Any, model: nn.Module) -> list[float]:
    """The rate of every ``nn.Dropout`` call of one forward pass of ``model`` (an abstract
    init: nothing is computed, no checkpoint needed)."""
    rates: list[float] = []
    args, kwargs = task.init_inputs(1)
    key = jax.random.key(0)

    def init():
        with nn.intercept_methods(_sample_dropout(rates)):
            return model.init({"params": key, "dropout": key}, *args, train=False, **kwargs)

    jax.eval_shape(init)
    return rates


# --------------------------------------------------------------------------- predictions


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """One run's predictions of a split's readable labelled examples, in split order.

    ``probabilities`` [N, C] are the inference-mode ones; ``samples`` [S, N, C] the MC-dropout
    passes (None without them); ``unreadable`` counts the records that could not be read."""

    probabilities: np.ndarray
    samples: np.ndarray | None
    labels: np.ndarray
    unreadable: int


def predict_split(
    inference: InferenceFunction,
    source: Any,
    *,
    split: str = "test",
    batch_size: int = 64,
    mc_samples: int = 0,
    seed: int = 0,
) -> SplitPredictions:
    """Predicts every record of ``source``, plus ``mc_samples`` MC-dropout passes when > 0.

    Batches are padded to ``batch_size`` so one program serves the split. The masks of batch b,
    pass s come from ``split(fold_in(key(seed), b), mc_samples)[s]``: the same seed and batch
    size give the same samples."""
    probabilities, samples, labels, unreadable = [], [], [], 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        count = len(pending)
        batch = stack_inputs(pending + [pending[-1]] * (batch_size - count), inference.input_spec)
        probabilities.append(inference(batch)["probabilities"][:count])
        if mc_samples:
            key = jax.random.fold_in(jax.random.key(seed), len(probabilities) - 1)
            keys = jax.random.split(key, mc_samples)
            drawn = _mc_dropout_passes(
                inference.task, inference.model, inference.variables, batch, keys
            )
            samples.append(np.asarray(drawn)[:, :count])
        pending.clear()

    for index in range(len(source)):
        try:
            record = source[index]
        except RecordError:
            unreadable += 1
            continue
        if "labels" not in record:
            raise UserError(f"the {split} split has no labels (record {index}) to score against")
        labels.append(int(np.asarray(record["labels"])))
        pending.append(record)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not labels:
        raise UserError(f"the {split} split has no readable examples")
    return SplitPredictions(
        probabilities=np.concatenate(probabilities).astype(np.float64),
        samples=np.concatenate(samples, axis=1).astype(np.float64) if samples else None,
        labels=np.asarray(labels, np.int64),
        unreadable=unreadable,
    )


# --------------------------------------------------------------------------- report


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and ECE of predictive distributions ``probs`` [N, C]."""
    picked = probs[np.arange(len(labels)), labels]
    return {
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
        "nll": float(-np.mean(np.log(np.maximum(picked, MIN_PROBABILITY)))),
        "ece": expected_calibration_error(probs, labels),
    }


def uncertainty_report(
    member_probs: np.ndarray,
    labels: np.ndarray,
    baselines: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Scores of the mean of ``member_probs`` [M, N, C] (MC samples or ensemble members):
    accuracy, NLL, ECE, mean predictive entropy (total), mean mutual information (epistemic),
    mean entropy of the right and wrong predictions, and the rejection curve over
    ``REJECTION_FRACTIONS`` (entropy ranks the examples). ``baselines`` (name -> [N, C]) are
    scored alike for comparison (the deterministic pass, or each member alone)."""
    member_probs = np.asarray(member_probs, np.float64)
    mean = member_probs.mean(axis=0)
    entropy = predictive_entropy(mean)
    correct = mean.argmax(-1) == labels
    return {
        "examples": int(len(labels)),
        **_scores(mean, labels),
        "mean_entropy": float(entropy.mean()),
        "mean_mutual_information": float(mutual_information(member_probs).mean()),
        "mean_entropy_correct": float(entropy[correct].mean()) if correct.any() else None,
        "mean_entropy_incorrect": float(entropy[~correct].mean()) if (~correct).any() else None,
        "rejection_curve": rejection_curve(mean, labels, REJECTION_FRACTIONS).to_dict(),
        "baselines": {name: _scores(p, labels) for name, p in (baselines or {}).items()},
    }


def plot_rejection_curve(report: Mapping[str, Any], path: str, title: str) -> None:
    """Accuracy of the kept examples against the percentage rejected as least certain."""
    curve = report["rejection_curve"]
    figure, axes = _new_figure(6, 4.5)
    axes.plot(100 * np.asarray(curve["fractions"]), curve["accuracy"], marker="o")
    axes.set(xlabel="rejected (least certain first, %)", ylabel="accuracy of the rest")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    _save_png(figure, path)


def plot_entropy_histogram(
    member_probs: np.ndarray, labels: np.ndarray, path: str, title: str
) -> None:
    """Histograms of the predictive entropy of right and of wrong mean predictions."""
    mean = np.asarray(member_probs, np.float64).mean(axis=0)
    entropy = predictive_entropy(mean)
    correct = mean.argmax(-1) == labels
    bins = np.linspace(0.0, np.log(mean.shape[1]), 31)
    figure, axes = _new_figure(6, 4.5)
    axes.hist(entropy[correct], bins=bins, alpha=0.6, label=f"correct ({correct.sum()})")
    axes.hist(entropy[~correct], bins=bins, alpha=0.6, label=f"incorrect ({(~correct).sum()})")
    axes.set(xlabel="predictive entropy (nats)", ylabel="examples", yscale="log")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    _save_png(figure, path)


# --------------------------------------------------------------------------- workdirs


def _load_runs(workdirs: Sequence[str]) -> list[tuple[str, Any]]:
    """(workdir, experiment) of each trained run; an ensemble's runs must share their data,
    task, classes and inputs."""
    from jaxdl.cli import trained_workdir_config
    from jaxdl.config import config_diff
    from jaxdl.experiment import build_experiment
    from jaxdl.tasks.classification import ImageClassification, SequenceClassification

    if len({os.path.realpath(w) for w in workdirs}) < len(workdirs):
        raise UserError(f"a workdir is given twice: {list(workdirs)}")
    configs = [trained_workdir_config(w) for w in workdirs]
    for workdir, config in zip(workdirs[1:], configs[1:], strict=True):
        diff = config_diff(configs[0].data, config.data)
        if diff:
            key, (first, other) = next(iter(diff.items()))
            raise UserError(
                f"{workdir} was trained on other data than {workdirs[0]}: "
                f"data.{key} is {other!r}, not {first!r}"
            )
    runs = [(w, build_experiment(c)) for w, c in zip(workdirs, configs, strict=True)]
    for workdir, experiment in runs:
        task = experiment.task
        if not isinstance(task, ImageClassification | SequenceClassification):
            raise UserError(f"uncertainty needs a classifier; {workdir} is a {task.name} run")
    first_dir, first = runs[0]
    for workdir, experiment in runs[1:]:
        checks = (
            ("task", lambda e: e.task.name),
            ("class names", lambda e: e.data.info.get("class_names") or e.task.num_classes),
            ("input spec", lambda e: e.task.input_spec()),
        )
        for what, read in checks:
            if read(experiment) != read(first):
                raise UserError(
                    f"{workdir} and {first_dir} differ in their {what}: "
                    f"{read(experiment)!r} vs {read(first)!r}"
                )
    return runs


def _inference(experiment: Any, workdir: str) -> InferenceFunction:
    """The deployment function of ``workdir``'s best (else latest) checkpoint."""
    from jaxdl.cli import _restore_best_state
    from jaxdl.export import experiment_inference

    return experiment_inference(experiment, _restore_best_state(experiment, workdir))


def run_uncertainty(
    workdirs: Sequence[str],
    *,
    mc_samples: int | None = None,
    split: str = "test",
    out_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """MC dropout (one workdir, ``mc_samples`` >= 2 passes) or a deep ensemble (several
    workdirs) over ``split``: writes ``{method}_{split}.json`` and the rejection-curve and
    entropy PNGs to ``out_dir`` (default ``workdirs[0]/uncertainty``); returns the report."""
    workdirs = list(workdirs)
    if not workdirs:
        raise UserError("uncertainty needs at least one --workdir")
    if len(workdirs) == 1 and (mc_samples is None or mc_samples < 2):
        raise UserError("one workdir means MC dropout: give --mc-samples N with N >= 2")
    if len(workdirs) > 1 and mc_samples is not None:
        raise UserError("--mc-samples is for one workdir; several workdirs form a deep ensemble")
    runs = _load_runs(workdirs)
    method = "mc_dropout" if len(runs) == 1 else "ensemble"
    report: dict[str, Any] = {"method": method, "split": split, "workdirs": workdirs}
    if method == "mc_dropout":
        workdir, experiment = runs[0]
        if not any(rate > 0 for rate in dropout_rates(experiment.task, experiment.model)):
            model = experiment.config.model.name
            raise UserError(f"{workdir}: model {model} has no dropout (rate > 0) to sample")
        inference = _inference(experiment, workdir)
        source = experiment.data.get(split)
        predicted = predict_split(
            inference, source, split=split, batch_size=batch_size, mc_samples=mc_samples, seed=seed
        )
        member_probs, labels = predicted.samples, predicted.labels
        baselines = {"deterministic": predicted.probabilities}
        report |= {"samples": mc_samples, "seed": seed, "unreadable": predicted.unreadable}
    else:
        members = []
        for workdir, experiment in runs:
            inference = _inference(experiment, workdir)
            source = experiment.data.get(split)
            members.append(predict_split(inference, source, split=split, batch_size=batch_size))
        labels = members[0].labels
        for workdir, member in zip(workdirs[1:], members[1:], strict=True):
            if not np.array_equal(member.labels, labels):
                raise UserError(f"{workdir} reads other {split} labels than {workdirs[0]}")
        member_probs = np.stack([m.probabilities for m in members])
        baselines = dict(zip(workdirs, member_probs, strict=True))
        report |= {"members": len(members), "unreadable": members[0].unreadable}
    report |= uncertainty_report(member_probs, labels, baselines)

    out_dir = out_dir or os.path.join(workdirs[0], "uncertainty")
    os.makedirs(out_dir, exist_ok=True)
    name = "MC dropout" if method == "mc_dropout" else f"ensemble of {len(runs)}"
    title = f"{name}, {split} split"
    report["plots"] = [f"{method}_rejection_{split}.png", f"{method}_entropy_{split}.png"]
    plot_rejection_curve(report, os.path.join(out_dir, report["plots"][0]), title)
    plot_entropy_histogram(member_probs, labels, os.path.join(out_dir, report["plots"][1]), title)
    with open(os.path.join(out_dir, f"{method}_{split}.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text: the mean prediction's scores, each baseline's, the rejection curve."""
    what = (
        f"MC dropout, {report['samples']} samples"
        if report["method"] == "mc_dropout"
        else f"deep ensemble of {report['members']}"
    )
    lines = [
        f"{what} on {report['examples']} {report['split']} examples",
        "| predictor | accuracy | NLL | ECE |",
        "|---|---|---|---|",
        f"| mean prediction | {report['accuracy']:.4f} | {report['nll']:.4f} | "
        f"{report['ece']:.4f} |",
    ]
    for name, scores in report["baselines"].items():
        lines.append(
            f"| {name} | {scores['accuracy']:.4f} | {scores['nll']:.4f} | {scores['ece']:.4f} |"
        )
    curve = report["rejection_curve"]
    points = ", ".join(
        f"{100 * f:.0f}% {a:.4f}"
        for f, a in zip(curve["fractions"], curve["accuracy"], strict=True)
    )
    lines += [
        f"mean predictive entropy {report['mean_entropy']:.4f} nats, mean mutual information "
        f"{report['mean_mutual_information']:.4f} nats",
        f"accuracy after rejecting the least certain: {points}",
    ]
    return "\n".join(lines)
