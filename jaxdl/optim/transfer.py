"""Transfer learning on the optimiser side: which parameters train, and at what learning rate.

The ``transfer`` config section (``jaxdl.config_sections.transfer``) splits the parameters by
their top-level module into three groups whose final updates are scaled by a group factor:

- ``head``: the modules named in ``transfer.head`` (default ``('head',)``, the classifier every
  jaxdl classifier has): factor 1.
- ``backbone``: trainable modules outside the head: ``transfer.backbone_lr_scale`` (a per-group
  learning rate, as a torch param group's ``lr``; decoupled weight decay scales with it too).
- ``frozen``: factor 0, so these parameters stay bit-identical.

``transfer.trainable_stages``: None fine-tunes everything; 0 freezes the whole backbone (feature
extraction); N trains the last N stages (top-level modules named ``stage<i>...``, e.g. ResNet's
``stage4_block2``) and freezes the stem and earlier stages.

A scale after the optimiser rather than ``optax.multi_transform``: the latter's per-group states
hold ``optax.MaskedNode``s, which ``jaxdl.parallel.rules.logical_to_shardings`` cannot place.
Frozen parameters therefore keep (unused) optimiser moments.

BatchNorm freezing (``transfer.freeze_batch_norm``) is the train step's part
(``make_train_step(freeze_batch_stats=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

from jaxdl.errors import ConfigError
from jaxdl.optim.schedules import reject_unknown_fields

TRANSFER_FIELDS = frozenset(["trainable_stages", "backbone_lr_scale", "freeze_batch_norm", "head"])
_STAGE = re.compile(r"stage(\d+)")


def parameter_groups(params: Any, config: Mapping[str, Any]) -> Any:
    """A tree like ``params`` of 'head' / 'backbone' / 'frozen' labels (see the module doc).
    Called by ``tx.init`` when the state is built, so its errors are ``ConfigError``s."""
    heads = tuple(config.get("head") or ("head",))
    trainable = config.get("trainable_stages")
    modules = list(params)
    stages = {name: int(m[1]) for name in modules if (m := _STAGE.match(name))}
    if trainable is not None and not stages and trainable > 0:
        raise ConfigError(
            f"transfer.trainable_stages={trainable} needs a model with stage<i> modules; "
            f"this one has {modules[:6]}"
        )
    numbers = sorted(set(stages.values()))
    if trainable is not None and trainable > len(numbers):
        raise ConfigError(
            f"transfer.trainable_stages={trainable} but the model has {len(numbers)} stages"
        )
    first_trainable = numbers[len(numbers) - trainable] if trainable else None

    def label(name: str) -> str:
        if name in heads:
            return "head"
        if trainable is None:
            return "backbone"
        if first_trainable is not None and stages.get(name, -1) >= first_trainable:
            return "backbone"
        return "frozen"

    return {name: jax.tree.map(lambda _, name=name: label(name), params[name]) for name in modules}


def with_transfer(
    optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict | None
) -> optax.GradientTransformation:
    """``optimizer`` with its updates scaled per head / backbone / frozen group of ``config`` (the
    ``transfer`` section); ``optimizer`` itself when the section is absent or changes nothing."""
    if config is None:
        return optimizer
    reject_unknown_fields(config, TRANSFER_FIELDS, "transfer")
    trainable = config.get("trainable_stages")
    scale = float(config.get("backbone_lr_scale", 1.0))
    if trainable is not None and (isinstance(trainable, bool) or int(trainable) != trainable):
        raise ValueError(f"transfer.trainable_stages must be an integer, got {trainable!r}")
    if trainable is not None and trainable < 0:
        raise ValueError(f"transfer.trainable_stages must be >= 0 or None, got {trainable}")
    if scale < 0:
        raise ValueError(f"transfer.backbone_lr_scale must be >= 0, got {scale}")
    if trainable is None and scale == 1.0:
        return optimizer
    factors = {"head": 1.0, "backbone": scale, "frozen": 0.0}

    def init(params: optax.Params) -> optax.EmptyState:
        parameter_groups(params, config)  # a bad field fails when the state is built
        return optax.EmptyState()

    def update(updates: optax.Updates, state: optax.EmptyState, params=None):
        labels = parameter_groups(updates, config)
        scaled = jax.tree.map(lambda u, label: u * factors[label], updates, labels)
        return scaled, state

    return optax.chain(optimizer, optax.GradientTransformation(init, update))
