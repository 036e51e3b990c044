"""Tests for the CTC speech models: every registered name builds with the documented shapes and
output lengths, CRNN/BiLSTM outputs ignore padding, a jitted CTC gradient step runs, parameters
carry logical names, the Conformer size presets have sane parameter counts, and (slow) sharded
training follows one device."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.models import available_models, get_model
from jaxdl.models.speech import CTC_BLANK_ID
from jaxdl.parallel import DEFAULT_RULES, batch_sharding, make_mesh, shard_batch
from jaxdl.parallel.gradients import gradient_reduction
from jaxdl.tasks.base import Field, Task
from jaxdl.train import ShardedStep, make_train_step, sharded_state_initializer
from tests.helpers import assert_same_training

# CI time: the models' padding, CTC-step and size checks run with `make test-slow`; the
# Conformer's references (tests/test_conformer.py) and the ctc task's tests stay in `make test`.
pytestmark = pytest.mark.slow

KEY = jax.random.key(0)
VOCAB, FEATURES = 11, 16
SPEECH_MODELS = ["bilstm_ctc", "conformer_ctc", "crnn_ctc"] + [
    f"conformer_ctc_{size}" for size in ("tiny", "s", "m", "l")
]
# Small versions of each family: each test compiles a handful of these only.
SMALL = {
    "conformer_ctc": dict(
        d_model=16, num_layers=2, num_heads=2, conv_kernel=5, subsampling_channels=4
    ),
    "crnn_ctc": dict(conv_channels=4, hidden_dim=8, num_layers=2),
    "bilstm_ctc": dict(hidden_dim=8, num_layers=2, frame_stack=2),
}
# (paper's parameter count including its LSTM decoder, Gulati et al. 2020 Table 1)
PAPER_PARAMS = {"s": 10.3e6, "m": 30.7e6, "l": 118.8e6}


def ceil_div(n, k):
    return -(-n // k)


def batch(lengths, length, seed=0):
    """Features [B, length, F] and int32 lengths: row b's first lengths[b] frames are the
    same whatever ``length`` and ``seed``, the rest is large garbage drawn with ``seed``."""
    speech = np.random.default_rng(100).normal(size=(len(lengths), max(lengths), FEATURES))
    features = 100.0 * np.random.default_rng(seed).normal(size=(len(lengths), length, FEATURES))
    for row, n in enumerate(lengths):
        features[row, :n] = speech[row, :n]
    return jnp.asarray(features, jnp.float32), jnp.asarray(lengths, jnp.int32)


def shapes(model, features, lengths):
    """(variables, (logits, out_lengths)) of ``model`` as ShapeDtypeStructs (traced only)."""

    def build(features, lengths):
        outputs, variables = model.init_with_output(KEY, features, lengths, train=False)
        return variables, outputs

    return jax.eval_shape(build, features, lengths)


def random_variables(model, features, lengths, seed=1):
    """``model``'s variables (init is traced, not run) with random N(0, 0.3^2) params and
    batch-norm running means 0, variances 1."""
    abstract = nn.meta.unbox(shapes(model, features, lengths)[0])
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return jnp.full(leaf.shape, 1.0 if name.endswith("['var']") else 0.0, leaf.dtype)
        return jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def apply_model(model, variables, features, lengths, *, train):
    (logits, out_lengths), _ = model.apply(
        variables, features, lengths, train=train, mutable=["batch_stats"]
    )
    return logits, out_lengths


def test_every_speech_model_is_registered():
    assert set(SPEECH_MODELS) <= set(available_models())


def check_shapes(name, model, vocab=VOCAB, freq=FEATURES):
    """Trace ``model`` on 2 rows of 37 frames of ``freq`` features: logits [2, T', vocab]
    float32, out_lengths [2] int32; returns the variables' shapes."""
    features = jax.ShapeDtypeStruct((2, 37, freq), jnp.float32)
    variables, (logits, out_lengths) = shapes(model, features, jnp.array([37, 21], jnp.int32))
    steps = 37 if name == "bilstm_ctc" else ceil_div(ceil_div(37, 2), 2)
    assert logits.shape == (2, steps, vocab) and logits.dtype == jnp.float32
    assert out_lengths.shape == (2,) and out_lengths.dtype == jnp.int32
    assert ("batch_stats" in variables) == (name != "bilstm_ctc")
    return variables


@pytest.mark.parametrize("name", ["bilstm_ctc", "conformer_ctc", "conformer_ctc_tiny", "crnn_ctc"])
def test_registered_models_build_with_documented_shapes(name):
    check_shapes(name, get_model(name, vocab_size=VOCAB))


@pytest.mark.parametrize(
    "name,overrides,train,subsampling",
    [
        ("crnn_ctc", {}, False, 4),
        ("crnn_ctc", dict(time_reduction=2), True, 2),
        ("bilstm_ctc", {}, True, 2),
    ],
)
def test_exact_out_lengths_and_real_logits_independent_of_padding(
    name, overrides, train, subsampling
):
    """out_lengths are the subsampled frames (ceil(L / 2) per halving); padding further (with
    other garbage) changes no real output frame; in training the CRNN's batch norms use the
    statistics of the real frames only (dropout off). BiLSTM: frames stacked in pairs."""
    model = get_model(name, vocab_size=VOCAB, **{**SMALL[name], **overrides}, dropout_rate=0.0)
    lengths = [13, 6, 11, 4]  # every residue mod 4
    short = batch(lengths, 13, seed=0)
    variables = random_variables(model, *short)
    logits, out_lengths = apply_model(model, variables, *short, train=train)
    longer, longer_lengths = apply_model(model, variables, *batch(lengths, 21, 1), train=train)
    expected = [ceil_div(n, subsampling) for n in lengths]
    np.testing.assert_array_equal(out_lengths, expected)
    np.testing.assert_array_equal(longer_lengths, expected)
    assert logits.shape[1] == ceil_div(13, subsampling)
    for row, n in enumerate(expected):
        np.testing.assert_allclose(longer[row, :n], logits[row, :n], atol=1e-5, rtol=1e-5)
    # Not vacuous: a change in a real frame changes the logits.
    changed = short[0].at[1, 0].add(1.0)
    changed_logits, _ = apply_model(model, variables, changed, short[1], train=train)
    assert not np.allclose(changed_logits[1, :2], logits[1, :2], atol=1e-4)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_jitted_ctc_gradient_step_runs(name):
    """One SGD step on optax's CTC loss (blank id 0, logit paddings from out_lengths), with
    dropout and batch statistics on: loss and gradients are finite, and the loss falls."""
    overrides = {**SMALL[name], "num_layers": 1, "dropout_rate": 0.1}
    model = get_model(name, vocab_size=VOCAB, **overrides)
    features, lengths = batch([13, 9], 13, seed=2)
    labels = jnp.array([[3, 1, 4], [1, 5, 0]], jnp.int32)
    label_paddings = (labels == 0).astype(jnp.float32)
    variables = random_variables(model, features, lengths)
    params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params, stats, key):
        (logits, out_lengths), updates = model.apply(
            {"params": params, **stats},
            features,
            lengths,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        logit_paddings = jnp.arange(logits.shape[1])[None, :] >= out_lengths[:, None]
        losses = optax.ctc_loss(
            logits,
            logit_paddings.astype(jnp.float32),
            labels,
            label_paddings,
            blank_id=CTC_BLANK_ID,
        )
        return losses.mean(), updates

    @jax.jit
    def step(params, stats, key):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, key)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        return params, {**stats, **updates}, loss, grads

    losses = []
    for index in range(2):
        params, stats, loss, grads = step(params, stats, jax.random.key(index))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_param_is_boxed_with_names_the_rules_map(name):
    model = get_model(name, vocab_size=VOCAB, **SMALL[name])
    variables, _ = shapes(model, *batch([13, 9], 13))
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    rule_names = {rule for rule, _ in DEFAULT_RULES}
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= rule_names, leaf.names


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS))
def test_conformer_size_presets_build_with_sane_parameter_counts(size):
    """No LSTM decoder here, so fewer parameters than the paper's (counted with 80 features
    and the 1024 word pieces of AlgoPerf's LibriSpeech vocabulary)."""
    name = f"conformer_ctc_{size}"
    variables = check_shapes(name, get_model(name, vocab_size=1024), vocab=1024, freq=80)
    count = sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(variables["params"])))
    print(f"{name}: {count / 1e6:.2f}M parameters (paper {PAPER_PARAMS[size] / 1e6}M)")
    assert 0.75 * PAPER_PARAMS[size] < count < PAPER_PARAMS[size]


@pytest.mark.parametrize(
    "name,overrides,match",
    [
        ("conformer_ctc", dict(positions="rotary"), "positions must be one of"),
        ("conformer_ctc", dict(conv_norm="group"), "conv_norm must be one of"),
        ("conformer_ctc", dict(d_model=30, num_heads=4), "divisible by num_heads"),
        ("conformer_ctc", dict(d_model=15, num_heads=3), "must be even"),
        ("crnn_ctc", dict(time_reduction=8), "time_reduction must be one of"),
        ("bilstm_ctc", dict(frame_stack=0), "frame_stack must be >= 1"),
        ("bilstm_ctc", dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        get_model(name, vocab_size=VOCAB, **overrides)


def test_bad_inputs_raise_clear_errors():
    model = get_model("bilstm_ctc", vocab_size=VOCAB, **SMALL["bilstm_ctc"])
    features, lengths = batch([5, 3], 5)
    with pytest.raises(ValueError, match="float features"):
        model.init(KEY, features[0], lengths, train=False)
    with pytest.raises(ValueError, match="int lengths"):
        model.init(KEY, features, lengths.astype(jnp.float32), train=False)


class _CTCTask(Task):
    """Just enough of a CTC task for the train step: features/lengths/labels batches and the
    mean CTC loss (blank 0, label id 0 also pads the labels)."""

    name = "ctc_test"

    def batch_spec(self):
        return {
            "features": Field(np.float32, (24, FEATURES)),
            "lengths": Field(np.int32),
            "labels": Field(np.int32, (3,)),
        }

    def model_inputs(self, batch):
        return (batch["features"], batch["lengths"]), {}

    def loss(self, forward, batch):
        logits, out_lengths = forward(*self.model_inputs(batch)[0])
        logit_paddings = jnp.arange(logits.shape[1])[None, :] >= out_lengths[:, None]
        losses = optax.ctc_loss(
            logits,
            logit_paddings.astype(jnp.float32),
            batch["labels"],
            (batch["labels"] == 0).astype(jnp.float32),
            blank_id=CTC_BLANK_ID,
        )
        return losses.mean(), {}

    def eval_sums(self, forward, batch):
        raise NotImplementedError

    def summarize(self, sums):
        raise NotImplementedError

    def predict(self, forward, inputs):
        raise NotImplementedError


def _sharded_run(sizes, devices, batches):
    """Losses and final state of 3 SGD steps of a small Conformer (batch norm) through the
    project's sharded train step, with the reduction ``gradient_reduction`` picks."""
    # No dropout: each device draws its own masks.
    model = get_model("conformer_ctc", vocab_size=VOCAB, **SMALL["conformer_ctc"], dropout_rate=0)
    task = _CTCTask()
    mesh = make_mesh(sizes, devices)
    _, shardings, initialize = sharded_state_initializer(
        model, optax.sgd(0.1), lambda: task.init_inputs(16), mesh
    )
    sharding = batch_sharding(mesh)
    reduction = gradient_reduction(mesh, shardings.params, sharding, DEFAULT_RULES, "auto")
    step = ShardedStep(
        make_train_step(task, reduction=reduction), mesh, shardings, sharding, returns_state=True
    )
    state, losses = initialize(jax.random.PRNGKey(0)), []
    for data in batches:
        state, metrics = step(state, shard_batch(data, sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.slow  # ~25 s: three train steps compiled on 1 and on 8 devices
@pytest.mark.parametrize("sizes", [{"data": 8}, {"fsdp": 2, "tensor": 4}], ids=str)
def test_sharded_training_matches_single_device(sizes):
    """dp8 runs the explicit reduction (batch statistics summed over devices), fsdp2 x tp4 the
    compiler's: losses, parameters and batch statistics follow the single-device run."""
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(3):
        lengths = rng.integers(14, 25, size=16)
        features, lengths = batch(list(lengths), 24, seed=int(rng.integers(1000)))
        labels = rng.integers(1, VOCAB, size=(16, 3)) * (np.arange(3) < rng.integers(1, 4, (16, 1)))
        batches.append({"features": features, "lengths": lengths, "labels": labels})
    ref_state, ref_losses = _sharded_run({"data": 1}, jax.devices()[:1], batches)
    state, losses = _sharded_run(sizes, jax.devices(), batches)
    assert_same_training(losses, ref_losses, state.params, ref_state.params)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=2e-3, atol=2e-5),
        state.batch_stats,
        ref_state.batch_stats,
    )
