"""Tests for the Conformer layers: padding invariance (layer and batch norm, train and eval),
relative-position attention against a loop reference, one block against a PyTorch
implementation of torchaudio's ConformerLayer, and the subsampling's output lengths."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdl.layers import (
    ConformerBlock,
    ConvSubsampling,
    RelativePositionAttention,
    lengths_to_mask,
)
from jaxdl.models import ConformerCTC

KEY = jax.random.key(0)
FEATURES = 12
# One small encoder per (positions, conv_norm); every test pads to these two lengths, so each
# configuration compiles at most twice (jit caches by model and shape).
SHORT, LONG = 13, 20


def random_variables(module: nn.Module, *args, seed: int = 0, **kwargs) -> dict:
    """Variables shaped as ``module.init(KEY, *args, **kwargs)`` makes them (traced, not run)
    with random values: params N(0, 0.3^2), batch-norm means N(0, 0.1^2), variances
    U(0.5, 1.5)."""
    shapes = jax.eval_shape(lambda: module.init(KEY, *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            if name.endswith("['var']"):
                return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
            return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)
        return jnp.asarray(0.3 * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes))


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def apply_model(model, variables, features, lengths, *, train):
    """(logits, out_lengths, updated batch_stats) of ``model`` (dropout off: no rng)."""
    (logits, out_lengths), updates = model.apply(
        variables, features, lengths, train=train, mutable=["batch_stats"]
    )
    return logits, out_lengths, updates.get("batch_stats")


def small_encoder(positions: str, conv_norm: str) -> ConformerCTC:
    return ConformerCTC(
        vocab_size=7,
        d_model=16,
        num_layers=2,
        num_heads=2,
        ffn_dim=32,
        conv_kernel=5,
        positions=positions,
        conv_norm=conv_norm,
        dropout_rate=0.0,
        subsampling_channels=4,
    )


def padded(utterances: list[np.ndarray], length: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """Utterances [T_i, F] in a [B, length, F] batch whose padding is large garbage."""
    rng = np.random.default_rng(seed)
    batch = 100.0 * rng.normal(size=(len(utterances), length, FEATURES))
    for row, utterance in enumerate(utterances):
        batch[row, : len(utterance)] = utterance
    lengths = np.array([len(u) for u in utterances], np.int32)
    return jnp.asarray(batch, jnp.float32), jnp.asarray(lengths)


def utterances(*lengths: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, FEATURES)) for n in lengths]


def assert_same_real_frames(a, b, out_lengths, atol=1e-5):
    for row, n in enumerate(np.asarray(out_lengths)):
        np.testing.assert_allclose(a[row, :n], b[row, :n], atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
    "positions,conv_norm,train",
    [
        ("relative", "layer", True),
        ("absolute", "layer", False),
        ("relative", "batch", False),
        ("absolute", "layer", True),
    ],
)
def test_real_outputs_do_not_depend_on_padding(positions, conv_norm, train):
    model = small_encoder(positions, conv_norm)
    speech = utterances(SHORT, 6)
    variables = random_variables(model, *padded(speech, SHORT, seed=0), train=False)
    logits, out_lengths, _ = apply_model(model, variables, *padded(speech, SHORT, 0), train=train)
    longer, longer_lengths, _ = apply_model(model, variables, *padded(speech, LONG, 1), train=train)
    np.testing.assert_array_equal(out_lengths, [4, 2])  # ceil(ceil(L / 2) / 2)
    np.testing.assert_array_equal(longer_lengths, out_lengths)
    assert logits.shape == (2, 4, 7) and longer.shape == (2, 5, 7)
    assert_same_real_frames(logits, longer, out_lengths)
    # Not vacuous: changing a real frame changes the outputs.
    speech[1][0] += 1.0
    changed, _, _ = apply_model(model, variables, *padded(speech, SHORT, 0), train=train)
    assert not np.allclose(changed[1, :2], logits[1, :2], atol=1e-3)


def test_output_upsampling_splits_each_encoder_frame_into_k_output_frames():
    """With ``output_upsampling=2`` output frame 2t+j is encoder frame t under the j-th slice of
    the head (frame-major order), out_lengths double, and padding still changes nothing real:
    the k=2 model equals two k=1 models, one per head slice, interleaved."""
    single = small_encoder("relative", "layer")
    double = small_encoder("relative", "layer").clone(output_upsampling=2)
    speech = utterances(SHORT, 6)
    inputs = padded(speech, SHORT, seed=0)
    variables = random_variables(double, *inputs, train=False)
    logits, out_lengths, _ = apply_model(double, variables, *inputs, train=False)
    np.testing.assert_array_equal(out_lengths, [8, 4])  # 2 * ceil(ceil(L / 2) / 2)
    assert logits.shape == (2, 8, 7)
    head = variables["params"]["head"]
    for j in range(2):
        sliced = {
            **variables,
            "params": {
                **variables["params"],
                "head": {
                    "kernel": head["kernel"][:, 7 * j : 7 * (j + 1)],
                    "bias": head["bias"][7 * j : 7 * (j + 1)],
                },
            },
        }
        reference, reference_lengths, _ = apply_model(single, sliced, *inputs, train=False)
        np.testing.assert_array_equal(2 * reference_lengths, out_lengths)
        np.testing.assert_allclose(logits[:, j::2], reference, atol=1e-5, rtol=1e-5)
    longer, _, _ = apply_model(double, variables, *padded(speech, LONG, 1), train=False)
    assert_same_real_frames(logits, longer, out_lengths)
    with pytest.raises(ValueError, match="output_upsampling must be >= 1"):
        small_encoder("relative", "layer").clone(output_upsampling=0)


def test_batch_norm_statistics_count_real_frames_only():
    """In training, the batch statistics (and so the outputs and updated running averages) of
    a padded batch are those of the same frames unpadded."""
    model = small_encoder("absolute", "batch")
    speech = utterances(SHORT, SHORT)
    variables = random_variables(model, *padded(speech, SHORT, 0), train=False)
    reference = apply_model(model, variables, *padded(speech, SHORT, 0), train=True)
    result = apply_model(model, variables, *padded(speech, LONG, 1), train=True)
    assert_same_real_frames(result[0], reference[0], reference[1])
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), result[2], reference[2])
    assert not np.allclose(result[2]["block0"]["conv"]["conv_norm"]["mean"], 0.0)

    # Rows of different lengths: padding further, with other garbage, changes nothing.
    speech = utterances(SHORT, 6, seed=2)
    reference = apply_model(model, variables, *padded(speech, SHORT, 0), train=True)
    result = apply_model(model, variables, *padded(speech, LONG, 1), train=True)
    assert_same_real_frames(result[0], reference[0], reference[1])
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), result[2], reference[2])


def test_conv_subsampling_lengths_are_the_frames_of_the_unpadded_utterance():
    layer = ConvSubsampling(8, channels=3)
    lengths = [1, 2, 3, 4, 5, 8]  # every residue mod 4
    speech = utterances(*lengths, seed=3)
    batch, batch_lengths = padded(speech, 11, seed=4)
    variables = random_variables(layer, batch, batch_lengths)
    out, out_lengths = jax.jit(layer.apply)(variables, batch, batch_lengths)
    np.testing.assert_array_equal(out_lengths, [ceil_half(ceil_half(n)) for n in lengths])
    for row, utterance in enumerate(speech):
        alone = jnp.asarray(utterance[None], jnp.float32)
        frames, alone_length = layer.apply(variables, alone, jnp.array([len(utterance)]))
        # The unpadded utterance gives exactly out_lengths frames, all real ...
        assert frames.shape[1] == out_lengths[row] == alone_length[0]
        np.testing.assert_allclose(out[row, : out_lengths[row]], frames[0], atol=1e-5)
    # ... and the padded frames of the batch are zeroed.
    assert not np.any(np.asarray(out)[~np.asarray(lengths_to_mask(out_lengths, out.shape[1]))])


def ceil_half(n: int) -> int:
    return -(-n // 2)


def _sinusoid(distance: int, features: int) -> np.ndarray:
    """The sinusoidal encoding of a signed distance: sines then cosines of
    distance * 10000^(-k / (features / 2))."""
    half = features // 2
    angles = [distance * 10000.0 ** (-k / half) for k in range(half)]
    return np.array([math.sin(a) for a in angles] + [math.cos(a) for a in angles])


@pytest.mark.parametrize("qkv_fused", [False, True], ids=["separate", "fused"])
def test_relative_attention_equals_a_loop_reference(qkv_fused):
    """score(i, j) = ((q_i + u) . k_j + (q_i + v) . R_{i-j}) / sqrt(d), R_{i-j} = W_pos^T
    sinusoid(i - j), per head; padded keys get no weight."""
    heads, head_dim, embed, length = 2, 4, 8, 6
    layer = RelativePositionAttention(num_heads=heads, head_dim=head_dim, qkv_fused=qkv_fused)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, length, embed)).astype(np.float32)
    key_lengths = [length, 4]
    mask = np.arange(length)[None, :] < np.array(key_lengths)[:, None]
    params = random_variables(layer, x, mask, train=False)["params"]
    out = layer.apply({"params": params}, x, jnp.asarray(mask), train=False)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    expected = np.zeros_like(x, np.float64)
    for b in range(2):
        for n in range(heads):

            def project(name, t, n=n, b=b):
                if qkv_fused:
                    c = ("query", "key", "value").index(name)
                    return x[b, t] @ p["qkv"]["kernel"][:, c, n] + p["qkv"]["bias"][c, n]
                return x[b, t] @ p[name]["kernel"][:, n] + p[name]["bias"][n]

            for i in range(length):
                q = project("query", i)
                scores = np.full(length, -np.inf)
                for j in range(key_lengths[b]):
                    r = p["pos_kernel"][:, n].T @ _sinusoid(i - j, embed)
                    content = (q + p["pos_bias_u"][n]) @ project("key", j)
                    position = (q + p["pos_bias_v"][n]) @ r
                    scores[j] = (content + position) / math.sqrt(head_dim)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                head_out = sum(weights[j] * project("value", j) for j in range(key_lengths[b]))
                expected[b, i] += head_out @ p["out"]["kernel"][n]
    expected += p["out"]["bias"]
    # Measured max abs difference 1.5e-7 (outputs up to ~2).
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


# --- PyTorch reference of one block --------------------------------------------------------
# Written after torchaudio's ConformerLayer / _FeedForwardModule / _ConvolutionModule
# (torchaudio/models/conformer.py, BSD-2-Clause, https://github.com/pytorch/audio), with
# biased pointwise/depthwise convolutions (torchaudio's ``bias=True``) and a LayerNorm option
# for the convolution module's BatchNorm1d.


class TorchConvModule(torch.nn.Module):
    def __init__(self, dim: int, kernel: int, norm: str):
        super().__init__()
        self.layer_norm = torch.nn.LayerNorm(dim)
        self.pointwise_in = torch.nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = torch.nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim)
        self.norm = torch.nn.BatchNorm1d(dim) if norm == "batch" else torch.nn.LayerNorm(dim)
        self.pointwise_out = torch.nn.Conv1d(dim, dim, 1)

    def forward(self, x):  # [B, T, D]
        y = self.layer_norm(x).transpose(1, 2)
        y = self.depthwise(torch.nn.functional.glu(self.pointwise_in(y), dim=1))
        if isinstance(self.norm, torch.nn.LayerNorm):
            y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        else:
            y = self.norm(y)
        return self.pointwise_out(torch.nn.functional.silu(y)).transpose(1, 2)


def torch_ffn(dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.LayerNorm(dim),
        torch.nn.Linear(dim, hidden),
        torch.nn.SiLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(hidden, dim),
        torch.nn.Dropout(0.1),
    )


class TorchConformerLayer(torch.nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int, kernel: int, norm: str):
        super().__init__()
        self.ffn1 = torch_ffn(dim, ffn_dim)
        self.self_attn_layer_norm = torch.nn.LayerNorm(dim)
        self.self_attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.conv_module = TorchConvModule(dim, kernel, norm)
        self.ffn2 = torch_ffn(dim, ffn_dim)
        self.final_layer_norm = torch.nn.LayerNorm(dim)

    def forward(self, x):  # [B, T, D], no padding
        x = 0.5 * self.ffn1(x) + x
        y = self.self_attn_layer_norm(x)
        x = self.self_attn(y, y, y, need_weights=False)[0] + x
        x = self.conv_module(x) + x
        x = 0.5 * self.ffn2(x) + x
        return self.final_layer_norm(x)


def load_into_torch(layer: TorchConformerLayer, variables: dict) -> None:
    """Copy a ConformerBlock's variables (absolute positions) into ``layer``."""
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), variables["params"])

    def norm(module, params):
        module.weight.data, module.bias.data = params["scale"], params["bias"]

    def linear(module, params):
        module.weight.data, module.bias.data = params["kernel"].T, params["bias"]

    for name in ("ffn1", "ffn2"):
        ffn = getattr(layer, name)
        norm(ffn[0], p[name]["norm"])
        linear(ffn[1], p[name]["mlp"]["wi"])
        linear(ffn[4], p[name]["mlp"]["wo"])
    norm(layer.self_attn_layer_norm, p["attn_norm"])
    attention, dim = p["attention"], layer.final_layer_norm.weight.shape[0]
    # One fused kernel [E, 3, heads, head_dim]: torch's in_proj [3E, E] is it flattened, transposed.
    layer.self_attn.in_proj_weight.data = attention["qkv"]["kernel"].reshape(dim, 3 * dim).T
    layer.self_attn.in_proj_bias.data = attention["qkv"]["bias"].reshape(-1)
    layer.self_attn.out_proj.weight.data = attention["out"]["kernel"].reshape(dim, dim).T
    layer.self_attn.out_proj.bias.data = attention["out"]["bias"]
    conv, module = p["conv"], layer.conv_module
    norm(module.layer_norm, conv["norm_in"])
    for name in ("pointwise_in", "pointwise_out"):
        getattr(module, name).weight.data = conv[name]["kernel"].T[..., None]
        getattr(module, name).bias.data = conv[name]["bias"]
    module.depthwise.weight.data = conv["depthwise"]["kernel"].permute(2, 1, 0)
    module.depthwise.bias.data = conv["depthwise"]["bias"]
    norm(module.norm, conv["conv_norm"])
    if "batch_stats" in variables:
        stats = variables["batch_stats"]["conv"]["conv_norm"]
        module.norm.running_mean.data = torch.tensor(np.asarray(stats["mean"]))
        module.norm.running_var.data = torch.tensor(np.asarray(stats["var"]))
    norm(layer.final_layer_norm, p["final_norm"])


@pytest.mark.parametrize("conv_norm", ["batch", "layer"])
def test_block_matches_a_torch_conformer_layer(conv_norm):
    """Eval mode, absolute positions: the block on a padded batch equals the torch layer on
    each utterance alone (float32, outputs of a LayerNorm, O(1): measured max abs difference
    2.4e-7, asserted < 2e-6)."""
    dim, ffn_dim, heads, kernel = 16, 32, 4, 7
    block = ConformerBlock(
        num_heads=heads,
        ffn_dim=ffn_dim,
        conv_kernel=kernel,
        positions="absolute",
        conv_norm=conv_norm,
        dropout_rate=0.1,
    )
    rng = np.random.default_rng(6)
    lengths = [11, 5]
    x = rng.normal(size=(2, 11, dim)).astype(np.float32)
    x[1, 5:] = 50.0 * rng.normal(size=(6, dim))
    mask = lengths_to_mask(jnp.array(lengths), 11)
    variables = random_variables(block, x, mask, seed=7, train=False)
    out = np.asarray(block.apply(variables, x, mask, train=False))

    torch.manual_seed(0)
    reference = TorchConformerLayer(dim, ffn_dim, heads, kernel, conv_norm).eval()
    load_into_torch(reference, variables)
    worst = 0.0
    for row, n in enumerate(lengths):
        with torch.no_grad():
            expected = reference(torch.tensor(x[row : row + 1, :n])).numpy()[0]
        worst = max(worst, float(np.abs(out[row, :n] - expected).max()))
    assert worst < 2e-6, worst
