"""Every sharding strategy trains exactly like one device, with the layouts the rules declare."""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax
import pytest

from jaxdl.models import get_model
from jaxdl.parallel import DEFAULT_RULES, batch_sharding, make_mesh, shard_batch
from jaxdl.parallel.gradients import gradient_reduction
from jaxdl.tasks import LanguageModeling, MaskedLanguageModeling, SequenceClassification, Task
from jaxdl.train import (
    ShardedStep,
    create_sharded_train_state,
    make_train_step,
    sharded_state_initializer,
)
from tests.helpers import assert_same_training

STRATEGIES = {
    "dp8": {"data": 8},
    "fsdp8": {"fsdp": 8},
    "dp2_tp4": {"data": 2, "tensor": 4},
    "fsdp2_tp4": {"fsdp": 2, "tensor": 4},
}


def _batches(tokens: bool, num_steps=3, batch=16):
    rng = np.random.default_rng(0)
    return [
        {
            "inputs": (
                rng.integers(1, 50, size=(batch, 12)).astype(np.int32)
                if tokens
                else rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
            ),
            "labels": rng.integers(0, 10, size=(batch,)).astype(np.int32),
        }
        for _ in range(num_steps)
    ]


def _step(task, mesh, shardings, reduction_mode, microbatches=1):
    """The train step with the gradient reduction ``mesh.gradient_reduction=reduction_mode``
    picks (auto: explicit on dp/fsdp meshes, the compiler's with tensor parallelism)."""
    sharding = batch_sharding(mesh)
    reduction = gradient_reduction(mesh, shardings.params, sharding, DEFAULT_RULES, reduction_mode)
    return ShardedStep(
        make_train_step(task, microbatches=microbatches, reduction=reduction),
        mesh,
        shardings,
        sharding,
        returns_state=True,
    )


def _run(model, tx, sizes, devices, batches, reduction_mode="auto"):
    mesh = make_mesh(sizes, devices)
    sample = jax.ShapeDtypeStruct(batches[0]["inputs"].shape, batches[0]["inputs"].dtype)
    state, shardings = create_sharded_train_state(model, tx, jax.random.PRNGKey(0), sample, mesh)
    sharding = batch_sharding(mesh)
    step = _step(None, mesh, shardings, reduction_mode)
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


# name -> (model kwargs, optimiser, token inputs?)
# SGD with momentum, not Adam: Adam divides each gradient by its own running magnitude, so an
# element whose gradient is near zero turns reduction-order noise (ulps, which differ between
# meshes and between XLA:CPU's GEMM libraries) into an update of up to the learning rate: a
# ResNet-8 kernel element drifted by 3.4e-5 under dp2_tp4 where SGD's parameters agree to 6e-8.
# Momentum keeps an optimiser state sharded like the parameters; the Adam moments' layouts are
# test_fsdp_shards_every_large_kernel_and_its_adam_moments's.
MOMENTUM_SGD = optax.sgd(0.05, momentum=0.9)
MODELS = {
    # BatchNorm statistics are global-batch statistics under every strategy (GSPMD all-reduces
    # them), so sharded and single-device runs agree.
    "resnet8": (
        dict(name="resnet", depth=8, stem="cifar", width=16, num_classes=10),
        MOMENTUM_SGD,
        False,
    ),
    "lenet5": (dict(name="lenet5", num_classes=10), MOMENTUM_SGD, False),
    "vgg11": (
        dict(name="vgg11", num_classes=10, width_multiplier=0.125, hidden=64, dropout_rate=0.0),
        MOMENTUM_SGD,
        False,
    ),
    # Plain SGD: an attention key bias has an exactly-zero gradient (softmax ignores it), and
    # Adam would normalise the ~1e-9 reduction-order noise in that zero to full-size updates.
    "transformer": (
        dict(
            name="transformer_classifier",
            vocab_size=64,
            num_classes=10,
            num_layers=2,
            num_heads=4,
            embed_dim=32,
            mlp_dim=64,
            max_len=12,
        ),
        optax.sgd(0.1),
        True,
    ),
}


@pytest.fixture(scope="module")
def reference_runs():
    """``model -> (batches, (state, losses) on one device)``, each built on first use, so a
    selection (-k, -m) runs only the references it compares against."""

    @functools.cache
    def reference(model_name):
        kw, tx, tokens = MODELS[model_name]
        batches = _batches(tokens)
        return batches, _run(get_model(**kw), tx, {"data": 1}, jax.devices()[:1], batches)

    return reference


# The model x strategy runs in the default suite (CI's time budget): the ResNet (BatchNorm,
# whose statistics the explicit reduction averages by hand) under FSDPxTP. The LM task cases
# cover pure DP, FSDP's explicit reduction and the text classifier the Transformer encoder
# under FSDPxTP; the other runs (the ResNet under DP among them) take the same code paths with
# other layers and are slow (make test-slow), as are the compiler's reduction on DP and FSDP.
DEFAULT_MODEL_RUNS = {("resnet8", "fsdp2_tp4")}


def _model_strategy_params() -> list:
    """Every model x strategy with jaxdl's reduction, plus the compiler's reduction for DP and
    FSDP; slow unless in DEFAULT_MODEL_RUNS."""
    params = []
    for model_name in MODELS:
        for name in STRATEGIES:
            slow = (model_name, name) not in DEFAULT_MODEL_RUNS
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(name, "auto", model_name, marks=marks))
        for name in ("dp8", "fsdp8"):
            params.append(pytest.param(name, "compiler", model_name, marks=pytest.mark.slow))
    return params


@pytest.mark.parametrize("strategy,reduction_mode,model_name", _model_strategy_params())
def test_sharded_training_matches_single_device(
    reference_runs, strategy, reduction_mode, model_name
):
    batches, (ref_state, ref_losses) = reference_runs(model_name)
    state, losses = _run(
        get_model(**MODELS[model_name][0]),
        MODELS[model_name][1],
        STRATEGIES[strategy],
        jax.devices(),
        batches,
        reduction_mode,
    )
    # Tolerance: the same maths in f32 with different reduction orders (all-reduce trees, split
    # matmuls) differs by a few ulps per op; 3 steps keep that well below 1e-4.
    assert_same_training(losses, ref_losses, state.params, ref_state.params)


# Task-based runs: the batch layout, the model call and the loss come from a task, and the token
# batches carry real padding (short sequences, masked-out LM targets).
_TRANSFORMER_DIMS = dict(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=12)
_LM = dict(name="transformer_lm", vocab_size=64, **_TRANSFORMER_DIMS)
_CLASSIFIER = dict(
    name="transformer_classifier", vocab_size=64, num_classes=10, **_TRANSFORMER_DIMS
)
TASK_STRATEGIES = ["dp8", "fsdp8", "dp2_tp4", "fsdp2_tp4"]
# Every case runs under each of these (strategy, gradient reduction) pairs.
TASK_RUNS = [(name, "auto") for name in TASK_STRATEGIES] + [("fsdp2_tp4", "explicit")]


def _lm_task():
    return LanguageModeling(seq_len=12, pad_id=0)


def _classifier_task():
    return SequenceClassification(max_len=12, num_classes=10, pad_id=0)


def _masked_lm_task():
    # Masks are drawn on device from the step key: every strategy must draw the same ones.
    return MaskedLanguageModeling(
        max_len=12, vocab_size=64, mask_id=3, pad_id=0, first_regular_id=4, mask_rate=0.3
    )


class TaskCase(NamedTuple):
    model: dict
    make_task: Callable[[], Task]
    # The TASK_RUNS in the default suite; the others are slow (make test-slow). None: all.
    default_runs: tuple[tuple[str, str], ...] | None = None


# Cases other than the LM keep the run mixing FSDP with tensor parallelism in the default suite
# (CI's time budget); their other runs are slow.
_VARIANT_DEFAULT_RUNS = (("fsdp2_tp4", "auto"),)
TASK_CASES = {
    # The LM's padded targets weight each device's loss by its tokens: every mesh stays in the
    # default suite (its pure-DP run stands in for the ResNet's, which is slow).
    "lm": TaskCase(_LM, _lm_task),
    "text_classifier": TaskCase(_CLASSIFIER, _classifier_task, _VARIANT_DEFAULT_RUNS),
    # Llama layout: RMSNorm, SwiGLU, rotary positions, untied lm_head and grouped-query
    # attention with 2 kv heads, fewer than tensor=4 (their kernels stay replicated there).
    "lm_llama": TaskCase(
        dict(
            _LM,
            norm="rms",
            mlp_activation="swiglu",
            position_embedding="rotary",
            num_kv_heads=2,
            tie_embeddings=False,
        ),
        _lm_task,
        (),  # all slow (CI's time budget); the plain lm case keeps FSDPxTP in the default suite
    ),
    # BERT layout (post-LN, embedding LN, token types, tanh pooler on [CLS], erf GELU), with
    # the original Transformer's sinusoidal positions (the other cases cover learned ones).
    "classifier_bert": TaskCase(
        dict(
            _CLASSIFIER,
            norm_position="post",
            embedding_norm=True,
            token_type_vocab=2,
            pooler="tanh",
            norm_epsilon=1e-12,
            mlp_activation="gelu_exact",
            pooling="cls",
            position_embedding="sinusoidal",
        ),
        _classifier_task,
        (),  # all slow (CI's time budget); text_classifier keeps the encoder under FSDPxTP in CI
    ),
    # BERT's masked-LM pre-training (the classifier's encoder under an MLM head).
    "masked_lm": TaskCase(
        dict(name="transformer_mlm", vocab_size=64, **_TRANSFORMER_DIMS),
        _masked_lm_task,
        (),  # all slow (CI's time budget): the classifier's encoder under its MLM head
    ),
}


def _task_batches(task: Task, num_steps=3, batch=16, seq_len=12):
    """Right-padded token batches (pad id 0) whose rows have different real lengths."""
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(num_steps):
        if isinstance(task, LanguageModeling):
            lengths = rng.integers(4, seq_len + 2, size=batch)  # real tokens of the T+1 window
            real = np.arange(seq_len + 1)[None, :] < lengths[:, None]
            tokens = np.where(real, rng.integers(1, 64, size=(batch, seq_len + 1)), 0)
            batches.append(
                {"tokens": tokens.astype(np.int32), "loss_mask": real.astype(np.float32)}
            )
        else:
            lengths = rng.integers(2, seq_len + 1, size=batch)
            real = np.arange(seq_len)[None, :] < lengths[:, None]
            tokens = np.where(real, rng.integers(1, 64, size=(batch, seq_len)), 0)
            labels = rng.integers(0, 10, size=batch)
            batches.append({"tokens": tokens.astype(np.int32), "labels": labels.astype(np.int32)})
        assert (~real).any() and real.any(axis=1).all()
    return batches


def _run_task(case, sizes, devices, batches, reduction_mode="auto", microbatches=1):
    model, task = get_model(**TASK_CASES[case].model), TASK_CASES[case].make_task()
    mesh = make_mesh(sizes, devices)
    batch_size = len(batches[0]["tokens"])
    # SGD for the reason given in MODELS.
    _, shardings, initialize = sharded_state_initializer(
        model, optax.sgd(0.1), lambda: task.init_inputs(batch_size), mesh
    )
    state = initialize(jax.random.PRNGKey(0))
    sharding = batch_sharding(mesh)
    step = _step(task, mesh, shardings, reduction_mode, microbatches)
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def task_reference_runs():
    """``case -> (batches, (state, losses) on one device)``, each case built on first use, so
    a selection (-k, -m) runs only the references it compares against."""

    @functools.cache
    def reference(case):
        batches = _task_batches(TASK_CASES[case].make_task())
        return batches, _run_task(case, {"data": 1}, jax.devices()[:1], batches)

    return reference


def _task_params():
    """(strategy, reduction, case) for every TASK_RUNS x TASK_CASES pair, ids strategy-mode-case;
    slow where the case's ``default_runs`` leave the run out."""
    return [
        pytest.param(
            strategy,
            reduction_mode,
            case,
            marks=()
            if spec.default_runs is None or (strategy, reduction_mode) in spec.default_runs
            else pytest.mark.slow,
            id=f"{strategy}-{reduction_mode}-{case}",
        )
        for strategy, reduction_mode in TASK_RUNS
        for case, spec in TASK_CASES.items()
    ]


@pytest.mark.parametrize("strategy,reduction_mode,case", _task_params())
def test_task_training_matches_single_device(task_reference_runs, strategy, reduction_mode, case):
    """Explicit reduction weights each device's loss by its target tokens: the LM batches'
    rows have different real lengths, so an unweighted mean of device losses would differ."""
    batches, (ref_state, ref_losses) = task_reference_runs(case)
    state, losses = _run_task(case, STRATEGIES[strategy], jax.devices(), batches, reduction_mode)
    # Training moved the loss, so the comparison is of real updates.
    assert_same_training(losses, ref_losses, state.params, ref_state.params)


def _shard_fraction(array) -> float:
    shard = array.addressable_shards[0].data
    return shard.size / array.size


def test_fsdp_shards_every_large_kernel_and_its_adam_moments():
    model = get_model(**MODELS["resnet8"][0])
    mesh = make_mesh({"fsdp": 8})
    sample = jax.ShapeDtypeStruct((16, 8, 8, 1), np.float32)
    state, _ = create_sharded_train_state(
        model, optax.adam(1e-3), jax.random.PRNGKey(0), sample, mesh
    )
    adam = state.opt_state[0]
    for tree in (state.params, adam.mu, adam.nu):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            # Every kernel with a dimension divisible by 8 is split 8 ways; only the 1-channel stem
            # conv (3x3x1x16: 16 out channels, but conv_out is the tensor axis under these rules)
            # may keep a replicated fallback dimension.
            if leaf.ndim >= 2 and leaf.size >= 1024:
                assert _shard_fraction(leaf) == pytest.approx(1 / 8), jax.tree_util.keystr(path)


@pytest.mark.slow  # CI time (15 s): the fsdp2_tp4 ResNet run stays
def test_tensor_parallel_splits_conv_output_channels():
    model = get_model(**MODELS["resnet8"][0])
    mesh = make_mesh({"data": 2, "tensor": 4})
    sample = jax.ShapeDtypeStruct((16, 8, 8, 1), np.float32)
    _, shardings = create_sharded_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), sample, mesh
    )
    specs = [s.spec for s in jax.tree.leaves(shardings.params)]
    conv_specs = [spec for spec in specs if len(spec) == 4]
    assert conv_specs and all(spec[3] == "tensor" for spec in conv_specs)
