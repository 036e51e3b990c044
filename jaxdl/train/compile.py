"""AOT compilation of train steps for any device list (fake CPU devices or a TPU topology).

``compile_experiment`` compiles the step ``jaxdl train`` runs for a config (the experiment's own
``train_step``, lowered on abstract state and batch); ``compile_train_step`` does the same for any
model and optimiser outside a config (benchmarks, research code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdl.parallel.aot import CompileReport, compile_lowered
from jaxdl.parallel.gradients import gradient_reduction
from jaxdl.parallel.rules import DEFAULT_RULES, Rules, batch_sharding
from jaxdl.tasks import ImageClassification, Task
from jaxdl.train.state import sharded_state_initializer
from jaxdl.train.steps import ShardedStep, make_train_step

if TYPE_CHECKING:
    from jaxdl.experiment import Experiment


def compile_experiment(experiment: Experiment) -> CompileReport:
    """Compiles ``experiment.train_step`` for its mesh and reports per-device costs."""
    batch = experiment.abstract_batch()
    lowered = experiment.train_step.lower(experiment.abstract_state, batch)
    return compile_lowered(lowered, experiment.abstract_state, batch, experiment.mesh)


def compile_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    global_batch: int,
    input_spec: jax.ShapeDtypeStruct,
    *,
    task: Task | None = None,
    rules: Rules = DEFAULT_RULES,
    gradient_reduction_mode: str = "auto",
) -> CompileReport:
    """Compiles jaxdl's train step of ``task`` (default: classification of ``inputs`` by
    ``labels``) for ``mesh``'s devices and reports its per-device costs.

    ``input_spec`` is one example's input (e.g. (224, 224, 3) float32, or (1024,) int32 tokens);
    ``gradient_reduction_mode`` is ``mesh.gradient_reduction`` (auto, explicit or compiler);
    with the default task the labels are int32 shaped like the model's output without its last
    axis ([B] for a classifier, [B, T] for a language model).
    """
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch < 1 or global_batch % data_parallel:
        raise ValueError(
            f"global batch {global_batch} must be a positive multiple of the data-parallel "
            f"degree {data_parallel} (mesh data x fsdp)"
        )
    task = task or ImageClassification()
    inputs = jax.ShapeDtypeStruct((global_batch, *input_spec.shape), input_spec.dtype)

    def init_inputs():
        return (jnp.zeros(inputs.shape, inputs.dtype),), {}

    state, shardings, _ = sharded_state_initializer(model, optimizer, init_inputs, mesh, rules)
    sharding = batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # Abstract variables are arguments (not closed over): eval_shape traces only those.
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        outputs = jax.eval_shape(
            lambda variables, x: model.apply(variables, x, train=False), variables, inputs
        )
    batch = {
        "inputs": jax.ShapeDtypeStruct(inputs.shape, inputs.dtype, sharding=sharding),
        "labels": jax.ShapeDtypeStruct(outputs.shape[:-1], jnp.int32, sharding=sharding),
    }
    reduction = gradient_reduction(mesh, shardings.params, sharding, rules, gradient_reduction_mode)
    step = ShardedStep(
        make_train_step(task, reduction=reduction),
        mesh,
        shardings,
        sharding,
        returns_state=True,
        rules=rules,
    )
    return compile_lowered(step.lower(state, batch), state, batch, mesh)
