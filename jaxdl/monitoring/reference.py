"""Reference statistics for drift monitoring: what the model's inputs, embeddings and
predictions look like on its own training data.

A reference is computed on a seeded sample (at most ``MAX_REFERENCE_EXAMPLES``) of the
experiment's training split:

* per-example scalar features of every input (``feature_plan`` / ``input_features``):
  float inputs with a channel axis (images [H, W, C]) give each channel's mean and standard
  deviation (``inputs_mean_c0``, ``inputs_std_c0``, ...; beyond ``MAX_CHANNELS`` channels, one
  mean and std over all values); float vectors (waveforms) their RMS (``audio_rms``); scalars
  (lengths) their value (``audio_length``); integer sequences (token ids) the number of
  non-padding tokens (``tokens_length``) and the fraction of those that are the tokenizer's
  unknown id (``tokens_oov_rate``, when the tokenizer has one);
* the model's predicted classes (classifiers: the argmax of ``logits``);
* at most ``MAX_EMBEDDINGS`` embeddings: the input of the classifier head (the pooled features),
  captured with ``nn.intercept_methods``, so neither the model nor its parameters change.

``DriftReference.save`` writes ``drift_reference.npz`` (the samples) and then
``drift_reference.json`` (the feature plan, per-feature summaries with the PSI bins, the
predicted-class distribution, where the sample came from); an export also gets
``drift_embedding.stablehlo``, the embedding network as a StableHLO module for the CPU, so
``jaxdl drift --export`` needs none of the model's code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.data.records import RecordError
from jaxdl.data.text import UNK_ID
from jaxdl.data.text_sources import ByteTokenizer
from jaxdl.errors import UserError
from jaxdl.export.formats import BATCH_DIM, Runner, load_stablehlo
from jaxdl.export.inference import InferenceFunction, stack_inputs
from jaxdl.monitoring.statistics import (
    PSI_BINS,
    PSI_EPSILON,
    bin_proportions,
    class_proportions,
    quantile_edges,
)
from jaxdl.tasks.base import BatchSpec

REFERENCE_ARRAYS = "drift_reference.npz"
REFERENCE_SUMMARY = "drift_reference.json"
EMBEDDING_GRAPH = "drift_embedding.stablehlo"
# Where ``jaxdl serve`` and ``jaxdl drift --workdir`` cache a workdir's reference.
WORKDIR_REFERENCE_DIR = "drift_reference"
MAX_REFERENCE_EXAMPLES = 2000
MAX_EMBEDDINGS = 500
MAX_CHANNELS = 8
BATCH_SIZE = 128
# The module whose input is the embedding: ``jaxdl.layers.classifier_head``'s Dense.
HEAD_NAME = "head"
logger = logging.getLogger(__name__)


def tokenizer_unk_id(tokenizer: Any) -> int | None:
    """The unknown-token id of a jaxdl tokenizer (None for bytes, which have none)."""
    if tokenizer is None or isinstance(tokenizer, ByteTokenizer):
        return None
    return int(getattr(tokenizer, "unk_id", UNK_ID))


def feature_plan(spec: BatchSpec, unk_id: int | None = None) -> dict[str, dict[str, Any]]:
    """How each input of ``spec`` becomes per-example scalar features (see the module doc)."""
    plan: dict[str, dict[str, Any]] = {}
    for name, field in spec.items():
        kind = np.dtype(field.dtype).kind
        if not field.shape:
            plan[name] = {"kind": "scalar"}
        elif kind in "biu":
            plan[name] = {"kind": "tokens", "pad_id": int(field.pad_value), "unk_id": unk_id}
        elif len(field.shape) == 1:
            plan[name] = {"kind": "signal"}
        else:
            channels = int(field.shape[-1])
            channels = channels if channels <= MAX_CHANNELS else 1
            plan[name] = {"kind": "channels", "channels": channels}
    return plan


def input_features(
    plan: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Feature name → float64 [N]: the per-example features ``plan`` names for a batch."""
    features: dict[str, np.ndarray] = {}
    for name, rule in plan.items():
        value = np.asarray(inputs[name])
        rows = value.reshape(value.shape[0], -1)
        if rule["kind"] == "scalar":
            features[name] = rows[:, 0].astype(np.float64)
        elif rule["kind"] == "tokens":
            length = np.sum(rows != rule["pad_id"], axis=1)
            features[f"{name}_length"] = length.astype(np.float64)
            if rule.get("unk_id") is not None:
                unknown = np.sum(rows == rule["unk_id"], axis=1)
                features[f"{name}_oov_rate"] = unknown / np.maximum(length, 1)
        elif rule["kind"] == "signal":
            features[f"{name}_rms"] = np.sqrt(np.mean(np.square(rows, dtype=np.float64), axis=1))
        else:
            channels = rows.reshape(rows.shape[0], -1, rule["channels"]).astype(np.float64)
            for index in range(rule["channels"]):
                features[f"{name}_mean_c{index}"] = channels[:, :, index].mean(axis=1)
                features[f"{name}_std_c{index}"] = channels[:, :, index].std(axis=1)
    return features


def predicted_classes(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Argmax class ids [N] of a classifier's outputs (``logits``), else None."""
    if "logits" not in outputs:
        return None
    return np.argmax(np.asarray(outputs["logits"]), axis=-1).astype(np.int32)


def sample_indices(total: int, count: int, seed: int) -> np.ndarray:
    """``min(total, count)`` distinct indices in [0, total), sorted, drawn with ``seed``."""
    if total <= count:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, count, replace=False))


def _padded_batches(
    inputs: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """``(batch, real examples)`` chunks of ``inputs``, the last padded with copies of its last
    example, so one compiled program serves every chunk."""
    total = len(next(iter(inputs.values())))
    for start in range(0, total, batch_size):
        chunk = {name: value[start : start + batch_size] for name, value in inputs.items()}
        count = len(next(iter(chunk.values())))
        if count < batch_size:
            chunk = {
                name: np.concatenate([value, np.repeat(value[-1:], batch_size - count, axis=0)])
                for name, value in chunk.items()
            }
        yield chunk, count


def run_batched(
    run: Runner, inputs: Mapping[str, np.ndarray], batch_size: int = BATCH_SIZE
) -> dict[str, np.ndarray]:
    """``run`` over ``inputs`` in padded chunks of ``min(batch_size, examples)``; the outputs
    of the real examples, concatenated."""
    total = len(next(iter(inputs.values())))
    parts = [
        {name: np.asarray(value)[:count] for name, value in run(chunk).items()}
        for chunk, count in _padded_batches(inputs, max(1, min(batch_size, total)))
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class _NoHead(Exception):
    """The model called no module named ``HEAD_NAME``."""


def embedding_function(inference: InferenceFunction) -> Callable[..., tuple[jax.Array]] | None:
    """``fn(*inputs) -> (embeddings,)``, float32 [B, D]: the input of the model's classifier head,
    captured with ``nn.intercept_methods`` (no change to the model or its parameter tree). None
    for models without one (CTC, language models)."""
    if inference.model is None or inference.task is None:
        return None
    names = inference.input_names

    def fn(*arrays: jax.Array) -> tuple[jax.Array]:
        captured = []

        def grab(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and context.module.name == HEAD_NAME:
                captured.append(args[0])
            return next_fun(*args, **kwargs)

        batch = dict(zip(names, arrays, strict=True))
        model_args, model_kwargs = inference.task.model_inputs(batch)
        with nn.intercept_methods(grab):
            inference.model.apply(inference.variables, *model_args, train=False, **model_kwargs)
        if not captured:
            raise _NoHead
        pooled = captured[-1]
        return (pooled.reshape(pooled.shape[0], -1).astype(jnp.float32),)

    try:
        jax.eval_shape(fn, *inference.abstract_inputs(1))
    except _NoHead:
        return None
    return fn


def embedding_runner(inference: InferenceFunction) -> Runner | None:
    """A runner ``{inputs} -> {"embeddings": [B, D]}`` of ``embedding_function`` (jitted)."""
    fn = embedding_function(inference)
    if fn is None:
        return None
    jitted = jax.jit(fn)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (embeddings,) = jitted(*(inputs[name] for name in inference.input_names))
        return {"embeddings": np.asarray(embeddings)}

    return run


def export_embedding_graph(inference: InferenceFunction, path: str) -> bool:
    """Writes the embedding function as a CPU StableHLO module with a dynamic batch dimension;
    False (nothing written) for models without a classifier head."""
    fn = embedding_function(inference)
    if fn is None:
        return False
    (batch,) = jax.export.symbolic_shape(BATCH_DIM)
    exported = jax.export.export(jax.jit(fn), platforms=("cpu",))(*inference.abstract_inputs(batch))
    with open(path, "wb") as handle:
        handle.write(exported.serialize())
    return True


def load_embedding_graph(path: str, input_names: list[str]) -> Runner:
    """A runner of a module written by ``export_embedding_graph`` (run on the CPU device)."""
    run = load_stablehlo(path, input_names, ["embeddings"])
    cpu = jax.devices("cpu")[0]

    def on_cpu(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with jax.default_device(cpu):
            return run(inputs)

    return on_cpu


@dataclasses.dataclass
class DriftReference:
    """Reference samples: ``features`` (name → float64 [N]), ``predictions`` (int32 [N] class
    ids, or None), ``embeddings`` (float32 [M, D], or None); ``plan`` turns inputs into the
    features; ``info`` says where the sample came from."""

    plan: dict[str, dict[str, Any]]
    features: dict[str, np.ndarray]
    predictions: np.ndarray | None = None
    num_classes: int | None = None
    embeddings: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.features or not len(next(iter(self.features.values()))):
            raise ValueError("a drift reference needs at least one example")
        self.edges = {name: quantile_edges(values) for name, values in self.features.items()}
        self.proportions = {
            name: bin_proportions(values, self.edges[name])
            for name, values in self.features.items()
        }

    @property
    def examples(self) -> int:
        return len(next(iter(self.features.values())))

    def summary(self) -> dict[str, Any]:
        """The JSON summary: plan, per-feature statistics and PSI bins, class distribution."""
        features = {
            name: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "psi_bin_edges": self.edges[name].tolist(),
                "psi_bin_proportions": self.proportions[name].tolist(),
            }
            for name, values in self.features.items()
        }
        classes = None
        if self.predictions is not None and self.num_classes:
            classes = class_proportions(self.predictions, self.num_classes).tolist()
        embeddings = None
        if self.embeddings is not None:
            embeddings = {
                "examples": int(self.embeddings.shape[0]),
                "dim": int(self.embeddings.shape[1]),
                "layer": f"input of the classifier head ({HEAD_NAME!r})",
            }
        return {
            "version": 1,
            **self.info,
            "examples": self.examples,
            "psi": {"bins": PSI_BINS, "epsilon": PSI_EPSILON},
            "plan": self.plan,
            "features": features,
            "num_classes": self.num_classes,
            "predicted_class_distribution": classes,
            "embeddings": embeddings,
        }

    def save(self, directory: str) -> None:
        """Writes ``REFERENCE_ARRAYS``, then ``REFERENCE_SUMMARY`` (each through a temporary
        file, so a reader never sees half of one)."""
        os.makedirs(directory, exist_ok=True)
        arrays = {f"feature/{name}": values for name, values in self.features.items()}
        if self.predictions is not None:
            arrays["predictions"] = self.predictions
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        path = os.path.join(directory, REFERENCE_ARRAYS)
        with open(path + ".partial", "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(path + ".partial", path)
        path = os.path.join(directory, REFERENCE_SUMMARY)
        with open(path + ".partial", "w") as handle:
            json.dump(self.summary(), handle, indent=2)
        os.replace(path + ".partial", path)

    @classmethod
    def load(cls, directory: str) -> DriftReference:
        """The reference saved in ``directory``; a one-line ``UserError`` when there is none or
        it cannot be read."""
        summary_path = os.path.join(directory, REFERENCE_SUMMARY)
        if not os.path.isfile(summary_path):
            raise UserError(
                f"{directory} has no drift reference ({REFERENCE_SUMMARY}); export the run again "
                "with this jaxdl (or use --workdir)"
            )
        try:
            with open(summary_path) as handle:
                summary = json.load(handle)
            with np.load(os.path.join(directory, REFERENCE_ARRAYS), allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            features = {name: arrays[f"feature/{name}"] for name in summary["features"]}
            info_keys = set(summary) - {
                "version", "examples", "psi", "plan", "features", "num_classes",
                "predicted_class_distribution", "embeddings",
            }  # fmt: skip
            return cls(
                plan=summary["plan"],
                features=features,
                predictions=arrays.get("predictions"),
                num_classes=summary.get("num_classes"),
                embeddings=arrays.get("embeddings"),
                info={key: summary[key] for key in sorted(info_keys)},
            )
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            reason = (str(error).splitlines() or [""])[0]
            raise UserError(
                f"cannot read the drift reference in {directory}: {type(error).__name__}: {reason}"
            ) from None


def compute_reference(
    inference: InferenceFunction,
    inputs: Mapping[str, np.ndarray],
    plan: dict[str, dict[str, Any]],
    info: Mapping[str, Any] | None = None,
    *,
    embed: bool = True,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> DriftReference:
    """The reference of an input batch: its features, the model's predicted classes and (with
    ``embed``) the embeddings of at most ``MAX_EMBEDDINGS`` of its examples."""
    outputs = run_batched(inference, inputs, batch_size)
    predictions = predicted_classes(outputs)
    embeddings = None
    runner = embedding_runner(inference) if embed else None
    if runner is not None:
        rows = sample_indices(len(next(iter(inputs.values()))), MAX_EMBEDDINGS, seed)
        subset = {name: value[rows] for name, value in inputs.items()}
        embeddings = run_batched(runner, subset, batch_size)["embeddings"]
    return DriftReference(
        plan=plan,
        features=input_features(plan, inputs),
        predictions=predictions,
        num_classes=None if predictions is None else int(outputs["logits"].shape[-1]),
        embeddings=embeddings,
        info=dict(info or {}),
    )


def experiment_reference(
    experiment,
    inference: InferenceFunction,
    checkpoint_step: int,
    *,
    split: str = "train",
    max_examples: int = MAX_REFERENCE_EXAMPLES,
    seed: int = 0,
) -> DriftReference:
    """The reference of a seeded sample of ``experiment``'s ``split`` (unreadable records are
    skipped)."""
    source = experiment.data.get(split)
    records = []
    for index in sample_indices(len(source), max_examples, seed):
        try:
            records.append(source[int(index)])
        except RecordError:
            continue
    if not records:
        raise UserError(f"the {split} split has no readable examples to take a drift reference")
    unk_id = tokenizer_unk_id(experiment.data.info.get("tokenizer"))
    plan = feature_plan(inference.input_spec, unk_id)
    info = {
        "split": split,
        "split_examples": len(source),
        "seed": seed,
        "checkpoint_step": int(checkpoint_step),
    }
    inputs = stack_inputs(records, inference.input_spec)
    return compute_reference(inference, inputs, plan, info, seed=seed)


def write_export_reference(
    experiment, inference: InferenceFunction, out_dir: str, checkpoint_step: int
) -> dict[str, Any]:
    """Writes the experiment's reference and its embedding graph into an export directory;
    returns the ``drift_reference`` entry of its metadata."""
    reference = experiment_reference(experiment, inference, checkpoint_step)
    reference.save(out_dir)
    entry = {
        "arrays": REFERENCE_ARRAYS,
        "summary": REFERENCE_SUMMARY,
        "split": reference.info["split"],
        "examples": reference.examples,
        "features": sorted(reference.features),
    }
    if export_embedding_graph(inference, os.path.join(out_dir, EMBEDDING_GRAPH)):
        entry["embedding_graph"] = EMBEDDING_GRAPH
    return {"drift_reference": entry}


def workdir_reference(
    experiment, inference: InferenceFunction, workdir: str, checkpoint_step: int
) -> DriftReference:
    """The workdir's reference for ``checkpoint_step``: read from ``W/drift_reference`` when it
    was taken from that checkpoint, else computed and cached there (a workdir that cannot be
    written is only logged)."""
    directory = os.path.join(workdir, WORKDIR_REFERENCE_DIR)
    if os.path.isfile(os.path.join(directory, REFERENCE_SUMMARY)):
        try:
            cached = DriftReference.load(directory)
            if cached.info.get("checkpoint_step") == int(checkpoint_step):
                return cached
        except UserError as error:
            logger.warning("recomputing the drift reference: %s", error)
    reference = experiment_reference(experiment, inference, checkpoint_step)
    try:
        reference.save(directory)
    except OSError as error:
        logger.warning("drift reference not cached in %s: %s", directory, error)
    return reference
