"""Builds an experiment's parts (data splits, model, optimiser, mesh) from a config.

Kept apart from the loop so ``train``, ``evaluate`` and the benchmarks construct exactly the same
things from a saved config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxdl.data import (
    ArrayDataset,
    get_dataset,
    make_augmenter,
    per_channel_stats,
    steps_per_epoch,
    stratified_split,
)
from jaxdl.models import get_model
from jaxdl.optim import build_optimizer, build_schedule
from jaxdl.parallel import DEFAULT_RULES, mesh_from_config


@dataclasses.dataclass
class Splits:
    """Train/val/test datasets after preprocessing (standardised with train statistics)."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset

    def get(self, name: str) -> ArrayDataset:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def load_splits(data_config: ml_collections.ConfigDict) -> Splits:
    """Loads the dataset, splits it stratified (seeded) and standardises with train-set stats."""
    options = data_config.get("options", ml_collections.ConfigDict()).to_dict()
    dataset = get_dataset(data_config.name, **options)
    fractions = tuple(float(f) for f in data_config.get("split_fractions", (0.7, 0.15, 0.15)))
    train_idx, val_idx, test_idx = stratified_split(
        dataset.labels, fractions=fractions, seed=int(data_config.get("split_seed", 0))
    )
    train, val, test = (dataset.subset(i) for i in (train_idx, val_idx, test_idx))
    if data_config.get("standardize", True):
        mean, std = per_channel_stats(train.inputs)
        train, val, test = (
            dataclasses.replace(
                d, inputs=((d.inputs - mean) / np.maximum(std, 1e-6)).astype(np.float32)
            )
            for d in (train, val, test)
        )
    return Splits(train, val, test)


@dataclasses.dataclass
class Experiment:
    """Everything the trainer needs, built from one config."""

    config: ml_collections.ConfigDict
    splits: Splits
    num_classes: int
    model: nn.Module
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    mesh: Mesh
    rules: Any
    global_batch_size: int
    per_process_batch_size: int
    steps_per_epoch: int
    total_steps: int
    augment: Any


def model_kwargs(model_config: ml_collections.ConfigDict, num_classes: int) -> dict:
    """Constructor kwargs from ``config.model``: num_classes filled from the data, dtype parsed."""
    kwargs = model_config.to_dict()
    kwargs.pop("name")
    if kwargs.get("num_classes") in (None, 0):
        kwargs["num_classes"] = num_classes
    if "dtype" in kwargs:
        kwargs["dtype"] = jax.numpy.dtype(kwargs["dtype"])
    return kwargs


def global_batch_size(train_config: ml_collections.ConfigDict, data_parallel: int) -> int:
    """``train.per_device_batch_size`` × data-parallel degree when set, else ``train.batch_size``.

    The per-device form keeps memory per device fixed as the mesh grows (the usual way to scale);
    the global form keeps the optimisation identical across meshes (the way to compare them).
    """
    per_device = train_config.get("per_device_batch_size")
    if per_device:
        return int(per_device) * data_parallel
    return int(train_config.batch_size)


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Resolves a config into data splits, model, optimiser, schedule and mesh; validates sizes."""
    splits = load_splits(config.data)
    num_classes = len(splits.train.class_names)
    model = get_model(config.model.name, **model_kwargs(config.model, num_classes))
    mesh = mesh_from_config(config.mesh)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    global_batch = global_batch_size(config.train, data_parallel)
    if global_batch % data_parallel or global_batch % jax.process_count():
        raise ValueError(
            f"train.batch_size={global_batch} must be divisible by the data-parallel degree "
            f"{data_parallel} and the process count {jax.process_count()}"
        )
    per_epoch = steps_per_epoch(len(splits.train), global_batch)
    total_steps = per_epoch * int(config.train.num_epochs)
    schedule = build_schedule(
        config.schedule,
        base_learning_rate=float(config.optimizer.learning_rate),
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
    )
    return Experiment(
        config=config,
        splits=splits,
        num_classes=num_classes,
        model=model,
        schedule=schedule,
        optimizer=build_optimizer(config.optimizer, schedule),
        mesh=mesh,
        rules=DEFAULT_RULES,
        global_batch_size=global_batch,
        per_process_batch_size=global_batch // jax.process_count(),
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
        augment=make_augmenter(config.get("augment", ml_collections.ConfigDict())),
    )
