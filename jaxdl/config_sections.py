"""Config sections every experiment shares (mesh, distributed, checkpoint, logging, init, early
stopping, SMOTE), with their defaults, so experiment files state only what is theirs.

Each function returns a fresh ``ConfigDict``; optional fields are ``placeholder``s so they can be
overridden from the command line (``--config.mesh.strategy=fsdp``).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def mesh(strategy: str = "dp") -> ml_collections.ConfigDict:
    """``strategy``: dp | fsdp | tp | dp_tp | fsdp_tp | custom; axis sizes (-1 = the rest).

    ``rules``: logical-axis rules placed before the defaults, e.g.
    ``(('vocab', None), ('embed', 'tensor'))``. ``gradient_reduction``: ``auto``, ``explicit`` (one
    reduce-scatter/all-reduce per gradient, see ``jaxdl.parallel.gradients``) or ``compiler``.
    """
    section = ml_collections.ConfigDict(
        {"strategy": strategy, "data": -1, "fsdp": 1, "sequence": 1, "tensor": 1}
    )
    section.rules = config_dict.placeholder(tuple)
    section.gradient_reduction = "auto"
    return section


def distributed() -> ml_collections.ConfigDict:
    """Multi-host: ``enabled='auto'`` initialises on SLURM / TPU pods, else explicit fields."""
    section = ml_collections.ConfigDict()
    section.enabled = "auto"
    section.coordinator_address = config_dict.placeholder(str)
    section.num_processes = 1
    section.process_id = 0
    section.cpu_collectives = config_dict.placeholder(str)
    return section


def checkpoint(max_to_keep: int = 2, every_steps: int | None = None) -> ml_collections.ConfigDict:
    """Latest-N checkpoints every ``every_steps`` steps (and after every evaluation)."""
    section = ml_collections.ConfigDict()
    section.max_to_keep = max_to_keep
    section.every_steps = config_dict.placeholder(int)
    section.every_steps = every_steps
    section.async_save = True
    return section


def logging(every_steps: int = 10) -> ml_collections.ConfigDict:
    """Train-metric window, TensorBoard, W&B and an optional profiler trace window."""
    section = ml_collections.ConfigDict()
    section.every_steps = every_steps
    section.tensorboard = True
    # (start, stop) steps of a jax.profiler trace into <workdir>/profile; None: no trace.
    section.profile_steps = config_dict.placeholder(tuple)
    section.wandb = ml_collections.ConfigDict()
    section.wandb.mode = "disabled"  # online | offline | disabled
    section.wandb.project = "jaxdl"
    section.wandb.entity = config_dict.placeholder(str)
    section.wandb.name = config_dict.placeholder(str)
    section.wandb.run_id = config_dict.placeholder(str)
    return section


def init(take: tuple[str, ...] = ("params/*", "batch_stats/*")) -> ml_collections.ConfigDict:
    """Start from other weights: a jaxdl workdir's best/latest checkpoint or an Orbax checkpoint.

    ``take`` / ``reinit`` are fnmatch patterns over 'params/...' and 'batch_stats/...' paths
    (e.g. ``reinit=('params/head/*',)`` for a new classifier head).
    """
    section = ml_collections.ConfigDict()
    section.from_workdir = config_dict.placeholder(str)
    section.from_checkpoint = config_dict.placeholder(str)
    section.checkpoint = "best"  # best | latest (from_workdir)
    section.take = take
    section.reinit = ()
    return section


def transfer() -> ml_collections.ConfigDict:
    """Transfer learning (``jaxdl.optim.transfer``): ``trainable_stages`` None fine-tunes all
    layers, 0 freezes the backbone (feature extraction), N trains the last N stages; the head
    (``head``: top-level modules) always trains; ``backbone_lr_scale`` multiplies the trainable
    backbone's learning rate; ``freeze_batch_norm`` keeps BatchNorm running statistics as
    loaded (no update)."""
    section = ml_collections.ConfigDict()
    section.trainable_stages = config_dict.placeholder(int)
    section.backbone_lr_scale = 1.0
    section.freeze_batch_norm = False
    section.head = ("head",)
    return section


def early_stopping(monitor: str, mode: str) -> ml_collections.ConfigDict:
    """As Keras' ``EarlyStopping``: stop at the ``patience``-th consecutive evaluation without an
    improvement of more than ``min_delta`` (None: never stop early); evaluations in the first
    ``start_from_epoch`` epochs (or up to ``start_from_step``) are ignored."""
    section = ml_collections.ConfigDict()
    section.monitor = monitor
    section.mode = mode
    section.patience = config_dict.placeholder(int)
    section.min_delta = 0.0
    section.start_from_epoch = 0  # Keras' start_from_epoch: a warm-up that never stops the run
    section.start_from_step = 0  # the same in steps (set one of the two)
    section.restore_best = True
    return section


def smote(k_neighbors: int = 5, sampling_strategy: str = "auto") -> ml_collections.ConfigDict:
    """``data.smote``: SMOTE on the train split of in-memory feature/image arrays (after any
    cross-validation fold split; ``jaxdl.data.imbalance``), seeded by ``data.split_seed``. Off
    until ``enabled`` (``--config.data.smote.enabled=true``); not with ``data.oversample``.
    ``sampling_strategy`` is imbalanced-learn's: 'auto' (every class up to the largest),
    'minority', 'not majority', ..."""
    section = ml_collections.ConfigDict()
    section.enabled = False
    section.k_neighbors = k_neighbors
    section.sampling_strategy = sampling_strategy
    return section
