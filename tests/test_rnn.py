"""Tests for the recurrent encoder and classifiers: parity with PyTorch's LSTM/GRU on padded
batches, padding invariance, logical names, sharded training and hyper-parameter checks."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxdl.layers import RecurrentEncoder
from jaxdl.models import RNNClassifier, get_model
from jaxdl.parallel import DEFAULT_RULES, batch_sharding, make_mesh, shard_batch
from jaxdl.parallel.gradients import ExplicitReduction, gradient_reduction
from jaxdl.tasks import SequenceClassification
from jaxdl.train import ShardedStep, make_train_step, sharded_state_initializer
from tests.helpers import assert_same_training

KEY = jax.random.key(0)
TINY = dict(vocab_size=64, num_classes=3, embed_dim=16, hidden_dim=16)
PARAM_AXES = {"vocab", "embed", "mlp", "classes"}
# torch's gate order within weight_ih/weight_hh rows: LSTM i,f,g,o; GRU r,z,n.
TORCH_GATES = {"lstm": "ifgo", "gru": "rzn"}


def _torch_rnn(cell: str, num_layers: int, bidirectional: bool, features: int, hidden: int):
    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    return module(
        features, hidden, num_layers=num_layers, bidirectional=bidirectional, batch_first=True
    )


def _flax_cell_params(rnn: torch.nn.RNNBase, cell: str, suffix: str) -> dict:
    """torch's weights for one layer and direction (``suffix`` e.g. '_l1_reverse') as the
    parameters of flax's LSTMCell/GRUCell.

    Flax gives LSTM gates one bias (on the recurrent Dense) and GRU r/z gates one bias (on the
    input Dense), so torch's b_ih + b_hh are summed there. GRU's candidate gate is the same
    in both, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so b_in and b_hn stay apart.
    """

    def rows(name: str) -> list[np.ndarray]:
        return np.split(getattr(rnn, name + suffix).detach().numpy(), len(TORCH_GATES[cell]))

    w_ih, w_hh, b_ih, b_hh = (rows(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    params = {}
    for k, gate in enumerate(TORCH_GATES[cell]):
        params[f"i{gate}"] = {"kernel": w_ih[k].T}
        params[f"h{gate}"] = {"kernel": w_hh[k].T}
        if cell == "lstm":
            params[f"h{gate}"]["bias"] = b_ih[k] + b_hh[k]
        elif gate == "n":
            params["in"]["bias"], params["hn"]["bias"] = b_ih[k], b_hh[k]
        else:
            params[f"i{gate}"]["bias"] = b_ih[k] + b_hh[k]
    return params


def _flax_encoder_params(rnn: torch.nn.RNNBase, cell: str, bidirectional: bool) -> dict:
    params = {}
    for layer in range(rnn.num_layers):
        forward = {"cell": _flax_cell_params(rnn, cell, f"_l{layer}")}
        if bidirectional:
            backward = {"cell": _flax_cell_params(rnn, cell, f"_l{layer}_reverse")}
            params[f"layer_{layer}"] = {"forward_rnn": forward, "backward_rnn": backward}
        else:
            params[f"layer_{layer}"] = forward
    return params


@pytest.mark.parametrize(
    "cell,num_layers,bidirectional",
    [("lstm", 1, False), ("lstm", 2, True), ("gru", 1, False), ("gru", 2, True)],
)
def test_encoder_matches_torch_on_padded_batches(cell, num_layers, bidirectional):
    """Outputs and final states equal torch's on a packed batch of different lengths: the
    backward direction starts at each row's last real step, not at the padding."""
    features, hidden, lengths = 6, 8, [7, 4, 1]
    x = np.random.default_rng(0).normal(size=(3, 7, features)).astype(np.float32)
    rnn = _torch_rnn(cell, num_layers, bidirectional, features, hidden)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        packed_out, state = rnn(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True)
    h_n, c_n = state if cell == "lstm" else (state, None)

    def by_layer(s: torch.Tensor) -> np.ndarray:
        """torch's [layers * directions, B, H] as [layers, B, directions * H] (fwd first)."""
        s = s.numpy().reshape(num_layers, -1, len(lengths), hidden)
        return s.transpose(0, 2, 1, 3).reshape(num_layers, len(lengths), -1)

    encoder = RecurrentEncoder(
        hidden, cell=cell, num_layers=num_layers, bidirectional=bidirectional
    )
    mask = np.arange(7)[None, :] < np.array(lengths)[:, None]
    params = _flax_encoder_params(rnn, cell, bidirectional)
    # The transplanted tree must be exactly the one flax creates.
    expected = nn.unbox(jax.eval_shape(lambda: encoder.init(KEY, x, mask, train=False))["params"])
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, expected)

    outputs, final = encoder.apply({"params": params}, x, mask, train=False)
    np.testing.assert_allclose(outputs, out.numpy(), atol=1e-6)
    np.testing.assert_allclose(final.hidden, by_layer(h_n), atol=1e-6)
    if cell == "lstm":
        np.testing.assert_allclose(final.memory, by_layer(c_n), atol=1e-6)
    else:
        assert final.memory is None


@pytest.mark.parametrize(
    "overrides",
    [
        dict(cell="lstm", pooling="last"),
        # CI time: the 2-layer bidirectional GRU runs with `make test-slow`.
        pytest.param(
            dict(cell="gru", bidirectional=True, num_layers=2, pooling="last"),
            marks=pytest.mark.slow,
        ),
        dict(cell="lstm", bidirectional=True, pooling="mean"),
    ],
)
def test_padding_never_changes_the_logits(overrides):
    model = RNNClassifier(**TINY, **overrides)
    rng = np.random.default_rng(0)
    lengths = np.array([9, 3, 1, 6])
    real = np.arange(9)[None, :] < lengths[:, None]
    tokens = np.where(real, rng.integers(1, 64, size=(4, 9)), 0).astype(np.int32)
    variables = model.init(KEY, tokens, train=False)
    apply = jax.jit(lambda t, m: model.apply(variables, t, m, train=False))
    logits = apply(tokens, None)
    # Trailing pad tokens ...
    padded = np.pad(tokens, ((0, 0), (0, 5)))
    np.testing.assert_allclose(apply(padded, None), logits, atol=1e-6)
    # ... and whatever the masked-out positions hold.
    junk = np.where(real, tokens, rng.integers(1, 64, size=tokens.shape)).astype(np.int32)
    np.testing.assert_allclose(apply(junk, real), logits, atol=1e-6)
    # Changing a real token does change them (the comparison above is not vacuous).
    changed = tokens.copy()
    changed[:, 0] = changed[:, 0] % 63 + 1
    assert not np.allclose(apply(changed, None), logits, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [dict(cell="lstm"), dict(cell="gru", bidirectional=True, num_layers=2, pooling="mean")],
)
def test_every_param_is_boxed_with_rank_matching_names_the_rules_map(overrides):
    model = RNNClassifier(**TINY, **overrides)
    tokens = jnp.ones((2, 5), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(KEY, tokens, train=False))
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert len(leaves) > 10
    rule_names = {name for name, _ in DEFAULT_RULES}
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= PARAM_AXES & rule_names, leaf.names


@pytest.mark.parametrize(
    "name,cell,bidirectional",
    [
        ("lstm_classifier", "lstm", False),
        ("gru_classifier", "gru", False),
        ("bilstm_classifier", "lstm", True),
    ],
)
def test_aliases_build_float32_logits_and_train_with_dropout(name, cell, bidirectional):
    model = get_model(name, **TINY, dropout_rate=0.5)
    assert (model.cell, model.bidirectional) == (cell, bidirectional)
    tokens = jnp.array([[5, 6, 7, 0], [8, 0, 0, 0]], jnp.int32)
    variables = model.init(KEY, tokens, train=False)
    logits = [
        model.apply(variables, tokens, train=True, rngs={"dropout": jax.random.key(k)})
        for k in (1, 2)
    ]
    assert logits[0].shape == (2, 3) and logits[0].dtype == jnp.float32
    assert not np.allclose(logits[0], logits[1])


def test_aliases_reject_the_fields_they_fix():
    with pytest.raises(TypeError, match="bidirectional"):
        get_model("bilstm_classifier", **TINY, bidirectional=False)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(cell="rnn"), "cell must be one of"),
        (dict(hidden_dim=0), "hidden_dim must be >= 1"),
        (dict(num_layers=0), "num_layers must be >= 1"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(num_classes=0), "num_classes must be >= 1"),
        (dict(pooling="max"), "pooling must be one of"),
        (dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\)"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        RNNClassifier(**{**TINY, **overrides})


def test_bad_inputs_raise_clear_errors():
    model = RNNClassifier(**TINY)
    tokens = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="padding_mask must be shaped like tokens"):
        model.init(KEY, tokens, jnp.ones((2, 4), bool), train=False)
    with pytest.raises(TypeError, match="integer tokens"):
        model.init(KEY, tokens.astype(jnp.float32), train=False)
    with pytest.raises(ValueError, match="cell must be one of"):
        RecurrentEncoder(8, cell="rnn")


def _classification_batches(num_steps=3, batch=16, seq_len=12):
    """Right-padded token batches (pad id 0) whose rows have different real lengths."""
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(num_steps):
        lengths = rng.integers(1, seq_len + 1, size=batch)
        real = np.arange(seq_len)[None, :] < lengths[:, None]
        tokens = np.where(real, rng.integers(1, 64, size=(batch, seq_len)), 0).astype(np.int32)
        batches.append({"tokens": tokens, "labels": rng.integers(0, 3, size=batch, dtype=np.int32)})
    return batches


def _train_step(sizes, devices, batch_size):
    """(initial state, train step, batch sharding) of a 2-layer BiLSTM trained by the
    sequence-classification task with the reduction ``mesh.gradient_reduction='auto'`` picks."""
    model = get_model("rnn_classifier", **TINY, cell="lstm", bidirectional=True, num_layers=2)
    task = SequenceClassification(max_len=12, num_classes=3, pad_id=0)
    mesh = make_mesh(sizes, devices)
    _, shardings, initialize = sharded_state_initializer(
        model, optax.sgd(0.5), lambda: task.init_inputs(batch_size), mesh
    )
    sharding = batch_sharding(mesh)
    reduction = gradient_reduction(mesh, shardings.params, sharding, DEFAULT_RULES, "auto")
    assert isinstance(reduction, ExplicitReduction) == (len(devices) > 1)
    step = ShardedStep(
        make_train_step(task, reduction=reduction), mesh, shardings, sharding, returns_state=True
    )
    return initialize(jax.random.PRNGKey(0)), step, sharding


def _train(sizes, devices, batches):
    state, step, sharding = _train_step(sizes, devices, len(batches[0]["tokens"]))
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def single_device_run():
    batches = _classification_batches()
    return batches, _train({"data": 1}, jax.devices()[:1], batches)


# Slow (CI's time budget): the scanned time loop under the same explicit reduction the
# Transformer and ResNet runs of the default suite check; FSDP adds the parameter gathers and
# gradient reduce-scatters around the loop.
@pytest.mark.slow
@pytest.mark.parametrize("sizes", [{"data": 8}, {"fsdp": 8}], ids=["dp8", "fsdp8"])
def test_sharded_training_matches_single_device(single_device_run, sizes):
    """Explicit gradient reduction on 8 devices follows the single-device run."""
    batches, (ref_state, ref_losses) = single_device_run
    state, losses = _train(sizes, jax.devices(), batches)
    assert_same_training(losses, ref_losses, state.params, ref_state.params)


@pytest.mark.slow  # CI time (18 s): the RNN sharded-training equality stays
def test_fsdp_gathers_and_reduces_each_parameter_outside_the_time_loop():
    """Under FSDP each cell parameter is gathered, and its gradient reduce-scattered, once per
    step rather than once per time step inside ``nn.RNN``'s loops."""
    state, step, sharding = _train_step({"fsdp": 8}, jax.devices(), 16)
    batch = shard_batch(_classification_batches(num_steps=1)[0], sharding)
    hlo = step.lower(state, batch).compile().as_text()
    loop_bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    assert loop_bodies  # the time loops are there
    computation, collectives = None, {True: 0, False: 0}
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            computation = line.removeprefix("ENTRY ").lstrip("%").split(" ")[0]
        if re.search(r"= \S+ (all-gather|reduce-scatter)(-start)?\(", line):
            collectives[computation in loop_bodies] += 1
    # Each of the 32 cell kernels (2 layers x 2 directions x 8) is fsdp-sharded: one gather
    # and one reduce-scatter each, none of them in a loop.
    assert collectives[True] == 0 and collectives[False] >= 2 * 32, collectives
