"""The composition root: one function turns a config into everything ``train``, ``evaluate`` and
``compile`` use, so the three can never build different programs for the same config.

``build_experiment(config)`` loads and splits the data, builds the task, model, schedule, optimiser
and mesh, derives the abstract (sharded) train state and compiles nothing yet: the train and eval
steps are ``ShardedStep``s that ``Trainer`` runs and ``jaxdl compile`` lowers for another topology.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from jaxdl.data.loading import load_data
from jaxdl.data.pipeline import steps_per_epoch as count_steps_per_epoch
from jaxdl.data.records import DataSplits
from jaxdl.errors import ConfigError
from jaxdl.models import available_models, get_model
from jaxdl.models.registry import model_hyperparameters
from jaxdl.optim import build_optimizer, build_schedule
from jaxdl.optim.transfer import with_transfer
from jaxdl.parallel import batch_sharding, is_main_process, mesh_from_config
from jaxdl.parallel.gradients import gradient_reduction
from jaxdl.parallel.rules import Rules, rules_with_overrides
from jaxdl.parallel.sharding_report import ShardingReport, abstract_params, sharding_report
from jaxdl.tasks import Task, build_task
from jaxdl.train.fingerprint import training_fingerprint
from jaxdl.train.state import TrainState, sharded_state_initializer
from jaxdl.train.steps import ShardedStep, make_eval_step, make_train_step


@dataclasses.dataclass
class Experiment:
    """Everything the loop, evaluation and AOT compilation need, built from one config."""

    config: ml_collections.ConfigDict
    data: DataSplits
    task: Task
    model: nn.Module
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    mesh: Mesh
    rules: Rules
    global_batch_size: int
    per_process_batch_size: int
    eval_batch_size: int
    steps_per_epoch: int
    total_steps: int
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: NamedSharding
    train_step: ShardedStep
    eval_step: ShardedStep
    initialize: Callable[[jax.Array], TrainState]
    sharding_report: ShardingReport

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One global training batch as sharded ShapeDtypeStructs (what ``train_step`` takes)."""
        return {
            name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=self.batch_sharding)
            for name, leaf in self.task.abstract_batch(self.global_batch_size).items()
        }

    def lower_train_step(self) -> Any:
        """The train step lowered for this experiment's mesh, without running or allocating."""
        return self.train_step.lower(self.abstract_state, self.abstract_batch())

    def fingerprint(self) -> dict[str, Any]:
        """The resolved config fields that shape training (see ``FINGERPRINT_SECTIONS``)."""
        return training_fingerprint(self.config, self.global_batch_size, self.total_steps)


def model_kwargs(model_config: ml_collections.ConfigDict, info: dict[str, Any]) -> dict:
    """Constructor kwargs from ``config.model``: ``num_classes``/``vocab_size`` the config leaves
    unset (absent, None or 0) are filled from the data when the model takes them; dtypes parsed."""
    kwargs = model_config.to_dict()
    name = kwargs.pop("name")
    accepted = model_hyperparameters(name) if name in available_models() else set()
    for key in ("num_classes", "vocab_size"):
        if kwargs.get(key) in (None, 0) and key in accepted and info.get(key):
            kwargs[key] = int(info[key])
    for key in ("dtype", "param_dtype"):
        if key in kwargs:
            kwargs[key] = jax.numpy.dtype(kwargs[key])
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


def _total_steps(train_config: ml_collections.ConfigDict, per_epoch: int) -> int:
    """``train.num_steps`` when set, else ``train.num_epochs`` × steps per epoch."""
    num_steps = train_config.get("num_steps")
    if num_steps:
        if int(num_steps) < 1:
            raise ConfigError(f"train.num_steps must be >= 1, got {num_steps}")
        return int(num_steps)
    epochs = train_config.get("num_epochs")
    if not epochs or int(epochs) < 1:
        raise ConfigError("set train.num_steps or train.num_epochs (>= 1)")
    return per_epoch * int(epochs)


def _as_config_error(section: str, call: Callable[[], Any]) -> Any:
    """Runs ``call``; a ValueError/TypeError it raises about the section's values becomes a
    ``ConfigError`` naming the section (these builders validate user-supplied values)."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{section}: {error}") from error


def build_experiment(
    config: ml_collections.ConfigDict,
    *,
    devices: Sequence[jax.Device] | None = None,
    data: DataSplits | None = None,
) -> Experiment:
    """Resolves ``config`` into data, task, model, optimiser, mesh, state layout and steps.

    ``devices`` (default: all) may be another topology's, e.g. TPU devices for AOT compilation
    from a CPU host; ``data`` skips loading when the splits are already at hand.
    """
    data = data if data is not None else load_data(config.data)
    task = build_task(config, data)
    model = _as_config_error(
        "model", lambda: get_model(config.model.name, **model_kwargs(config.model, data.info))
    )
    mesh = _as_config_error("mesh", lambda: mesh_from_config(config.mesh, devices))
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    global_batch = global_batch_size(config.train, data_parallel)
    processes = jax.process_count()
    if global_batch < 1 or global_batch % data_parallel or global_batch % processes:
        raise ConfigError(
            f"train.batch_size={global_batch} must be a positive multiple of the data-parallel "
            f"degree {data_parallel} and the process count {processes}"
        )
    eval_batch = int(config.train.get("eval_batch_size") or global_batch)
    if eval_batch % data_parallel or eval_batch % processes:
        raise ConfigError(
            f"train.eval_batch_size={eval_batch} must be a multiple of the data-parallel degree "
            f"{data_parallel} and the process count {processes}"
        )
    # Packed text counts rows, not documents: the loader says how many one epoch makes.
    train_examples = int(data.info.get("train_examples", len(data.train)))
    if global_batch > train_examples:
        raise ConfigError(
            f"train.batch_size={global_batch} exceeds the {train_examples:,} training examples"
        )
    per_epoch = count_steps_per_epoch(train_examples, global_batch)
    total_steps = _total_steps(config.train, per_epoch)
    schedule = _as_config_error(
        "schedule",
        lambda: build_schedule(
            config.schedule,
            base_learning_rate=float(config.optimizer.learning_rate),
            steps_per_epoch=per_epoch,
            total_steps=total_steps,
        ),
    )
    optimizer = _as_config_error("optimizer", lambda: build_optimizer(config.optimizer, schedule))
    optimizer = _as_config_error(
        "transfer", lambda: with_transfer(optimizer, config.get("transfer"))
    )
    rules = _as_config_error("mesh", lambda: rules_with_overrides(config.mesh.get("rules")))
    abstract_state, shardings, initialize = sharded_state_initializer(
        model, optimizer, lambda: task.init_inputs(global_batch), mesh, rules
    )
    # Dimensions their mesh axis does not divide are replicated silently; say so once per run.
    report = sharding_report(
        abstract_params(model, lambda: task.init_inputs(global_batch), mesh, rules), mesh, rules
    )
    if report.fallbacks and is_main_process():
        logging.getLogger("jaxdl").warning(report.warning())
    sharding = batch_sharding(mesh, rules)
    microbatches = int(config.train.get("microbatches", 1))
    if microbatches < 1 or (global_batch // data_parallel) % microbatches:
        raise ConfigError(
            f"train.microbatches={microbatches} must divide the per-device batch "
            f"{global_batch // data_parallel} (train.batch_size={global_batch} over "
            f"{data_parallel} data-parallel devices)"
        )
    reduction = _as_config_error(
        "mesh",
        lambda: gradient_reduction(
            mesh,
            shardings.params,
            sharding,
            rules,
            config.mesh.get("gradient_reduction", "auto"),
        ),
    )
    return Experiment(
        config=config,
        data=data,
        task=task,
        model=model,
        schedule=schedule,
        optimizer=optimizer,
        mesh=mesh,
        rules=rules,
        global_batch_size=global_batch,
        per_process_batch_size=global_batch // processes,
        eval_batch_size=eval_batch,
        steps_per_epoch=per_epoch,
        total_steps=total_steps,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batch_sharding=sharding,
        train_step=ShardedStep(
            make_train_step(
                task,
                microbatches=microbatches,
                skip_nonfinite=config.train.get("on_nonfinite", "stop") != "stop",
                reduction=reduction,
                freeze_batch_stats=bool(config.get("transfer", {}).get("freeze_batch_norm")),
            ),
            mesh,
            shardings,
            sharding,
            returns_state=True,
            rules=rules,
        ),
        eval_step=ShardedStep(
            make_eval_step(task), mesh, shardings, sharding, returns_state=False, rules=rules
        ),
        initialize=initialize,
        sharding_report=report,
    )
