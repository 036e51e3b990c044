"""The CPU formulations of convolution and pooling equal the plain XLA ops (forward and
gradients), the max-pool tie rule, the switches that force the plain ops, and the depthwise 1-D
convolution against torch."""

import importlib.util
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.layers import BasicBlock, Conv, DepthwiseConv1D, conv2d, depthwise_conv1d, max_pool
from jaxdl.layers import conv as conv_module
from jaxdl.layers.conv import (
    IMPL_ENV_VAR,
    conv_as_taps,
    conv_formulations,
    depthwise_conv2d_taps,
    resolve_padding,
    use_fast_paths,
)
from jaxdl.layers.pooling import max_pool_taps
from jaxdl.models import get_model

KEY = jax.random.key(0, impl="rbg")
TOL = {"rtol": 2e-5, "atol": 2e-5}


def _assert_same(reference, *candidates_and_args):
    """Each candidate function's value and gradients (for a fixed random cotangent) equal
    ``reference``'s on ``args``; all computed in one jit to compile once."""
    candidates = [f for f in candidates_and_args if callable(f)]
    args = candidates_and_args[len(candidates) :]

    @jax.jit
    def run(*args):
        results = []
        for fn in (reference, *candidates):
            out, vjp = jax.vjp(fn, *args)
            cotangent = jax.random.normal(jax.random.key(1, impl="rbg"), out.shape, out.dtype)
            results.append((out, vjp(cotangent)))
        return results

    want, *got = run(*args)
    for result in got:
        for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, **TOL)


def _plain_conv(x, kernel, strides, padding, dilation, groups):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


# (input H, W), kernel (kh, kw), strides, padding, dilation, feature groups
CONV_CASES = [
    ((2, 2), (3, 3), (1, 1), "SAME", (1, 1), 1),  # ResNet-18 stage 4 at 64x64
    ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),  # only the centre tap is kept
    ((4, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),  # taps only for the input gradient
    ((2, 3), (3, 2), (2, 1), ((2, 0), (1, 3)), (1, 1), 1),  # asymmetric pads
    ((3, 3), (3, 3), (1, 1), "SAME", (2, 1), 1),  # dilated kernel larger than the map
    ((5, 4), (2, 3), (3, 2), ((0, 1), (2, 2)), (2, 2), 1),
    ((2, 2), (3, 3), (1, 1), "SAME", (1, 1), 2),  # grouped
    ((4, 5), (3, 3), (2, 1), 1, (1, 2), 4),  # depthwise (groups = channels)
    ((2, 1), (2, 2), (1, 1), ((3, 3), (0, 3)), (1, 1), 1),  # some taps read only padding
    ((6, 5), (1, 1), (2, 2), "VALID", (1, 1), 1),  # 1x1/2: ResNet's downsampling shortcut
    ((3, 4), (1, 1), (1, 1), ((1, 0), (0, 2)), (1, 1), 1),  # padded 1x1
    ((4, 4), (1, 1), (1, 1), "SAME", (1, 1), 2),  # grouped 1x1
]


@pytest.mark.parametrize("size, kernel_size, strides, padding, dilation, groups", CONV_CASES)
def test_conv_formulations_equal_plain_conv_forward_and_gradients(
    size, kernel_size, strides, padding, dilation, groups
):
    channels, features = 4, 8
    x = jax.random.normal(KEY, (2, *size, channels))
    kernel_shape = (*kernel_size, channels // groups, features)
    kernel = jax.random.normal(jax.random.key(2, impl="rbg"), kernel_shape)
    window = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    pads = resolve_padding(padding, size, window, strides)

    def plain(x, w):
        return _plain_conv(x, w, strides, pads, dilation, groups)

    _assert_same(
        plain,
        lambda x, w: conv_as_taps(x, w, strides, pads, dilation, groups),
        # conv2d on CPU: the per-direction choice of conv_formulations (custom_vjp where mixed).
        lambda x, w: conv2d(x, w, strides, padding, dilation, groups),
        x,
        kernel,
    )


# (input H, W), kernel (kh, kw), strides, padding, dilation: depthwise (groups = channels).
DEPTHWISE_CASES = [
    ((9, 9), (3, 3), (1, 1), "SAME", (1, 1)),  # MobileNet / EfficientNet stride-1 block
    ((9, 8), (3, 3), (2, 2), "SAME", (1, 1)),  # stride 2, odd and even maps
    ((8, 9), (5, 5), (2, 2), "SAME", (1, 1)),  # EfficientNet's 5x5 stride 2
    ((3, 3), (5, 5), (1, 1), "SAME", (1, 1)),  # kernel larger than the map: taps dropped
    ((7, 6), (3, 3), (2, 1), ((2, 0), (1, 3)), (2, 1)),  # asymmetric pads, dilation
    ((1, 1), (3, 3), (1, 1), "SAME", (1, 1)),  # only the centre tap
    ((2, 2), (2, 2), (1, 1), ((3, 3), (3, 3)), (1, 1)),  # some outputs read only padding
]


@pytest.mark.parametrize("size, kernel_size, strides, padding, dilation", DEPTHWISE_CASES)
def test_depthwise_conv2d_taps_equal_plain_conv_forward_and_gradients(
    size, kernel_size, strides, padding, dilation
):
    channels = 5
    x = jax.random.normal(KEY, (3, *size, channels))
    kernel = jax.random.normal(jax.random.key(2, impl="rbg"), (*kernel_size, 1, channels))
    window = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    pads = resolve_padding(padding, size, window, strides)
    _assert_same(
        lambda x, w: _plain_conv(x, w, strides, pads, dilation, channels),
        lambda x, w: depthwise_conv2d_taps(x, w, strides, pads, dilation),
        lambda x, w: conv2d(x, w, strides, padding, dilation, channels),
        x,
        kernel,
    )


@pytest.fixture
def cpu_trace(monkeypatch):
    """Traces as for CPU whatever the default backend: the tests that assert the CPU
    formulation also pass where the suite runs on a GPU (benchmarks/gpu_tests.sh)."""
    monkeypatch.setattr(conv_module, "trace_platform", lambda: "cpu")


def test_depthwise_conv2d_on_cpu_emits_no_convolution_in_any_direction(cpu_trace):
    x = jnp.ones((2, 8, 8, 6))
    kernel = jnp.ones((3, 3, 1, 6))

    def loss(x, w):
        return jnp.sum(conv2d(x, w, (2, 2), "SAME", feature_group_count=6) ** 2)

    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, kernel))
    # A channel multiplier of 2 (kernel [3, 3, 1, 12]) is not depthwise-by-taps: grouped conv.
    multiplier = jax.make_jaxpr(lambda x, w: conv2d(x, w, (1, 1), "SAME", (1, 1), 6))
    assert "conv_general_dilated" in str(multiplier(x, jnp.ones((3, 3, 1, 12))))


def test_conv_formulation_policy_on_resnet18_shapes():
    # 3x3 on 2x2: everything as taps; 3x3/2 from 4x4 to 2x2: input gradient only; 4x4+: plain;
    # 1x1: one matmul everywhere.
    assert conv_formulations((2, 2), (2, 2), (3, 3), (1, 1)) == ("taps", "taps", "taps")
    assert conv_formulations((4, 4), (2, 2), (3, 3), (1, 1)) == ("plain", "taps", "plain")
    assert conv_formulations((4, 4), (4, 4), (3, 3), (1, 1)) == ("plain",) * 3
    assert conv_formulations((4, 4), (2, 2), (1, 1), (1, 1)) == ("taps",) * 3  # a matmul
    assert conv_formulations((16, 16), (16, 16), (1, 1), (1, 1)) == ("taps",) * 3
    assert conv_formulations((4, 4), (4, 4), (3, 3), (2, 2)) == ("taps", "taps", "taps")


def test_taps_drop_every_tap_that_reads_only_padding(cpu_trace):
    x = jax.random.normal(KEY, (2, 1, 1, 4))
    kernel = jax.random.normal(KEY, (3, 3, 4, 8))
    jaxpr = jax.make_jaxpr(lambda x, w: conv2d(x, w, (1, 1), "SAME"))(x, kernel)
    assert "conv_general_dilated" not in str(jaxpr)
    np.testing.assert_allclose(
        conv2d(x, kernel, (1, 1), "SAME"), jnp.einsum("nhwc,co->nhwo", x, kernel[1, 1]), **TOL
    )
    # Every output position reads only padding: zeros, as the plain conv gives.
    y = conv_as_taps(x, kernel, (4, 4), ((3, 3), (3, 3)), (1, 1))
    np.testing.assert_array_equal(y, _plain_conv(x, kernel, (4, 4), ((3, 3),) * 2, (1, 1), 1))


POOL_CASES = [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (8, 8)),  # ResNet's stem pool
    ((2, 2), (2, 2), "SAME", (5, 7)),  # VGG's pools on odd sizes
    ((3, 3), (1, 1), "SAME", (4, 5)),  # overlapping windows
    ((2, 3), (2, 1), ((0, 1), (2, 0)), (5, 4)),
]


@pytest.mark.parametrize("window, strides, padding, size", POOL_CASES)
def test_max_pool_equals_nn_max_pool_forward_and_gradients(window, strides, padding, size):
    x = jax.random.normal(KEY, (2, *size, 3))
    _assert_same(
        lambda x: nn.max_pool(x, window, strides=strides, padding=padding),
        lambda x: max_pool(x, window, strides, padding),
        x,
    )


def _first_max_rule_gradient(x, window, strides, cotangent):
    """Reference: each window gives its cotangent to its first maximum (row-major order)."""
    grad = np.zeros_like(x)
    for n, i, j, c in itertools.product(*map(range, cotangent.shape)):
        patch = x[n, i * strides[0] : i * strides[0] + window[0], j * strides[1] :][
            :, : window[1], c
        ]
        a, b = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: first maximum
        grad[n, i * strides[0] + a, j * strides[1] + b, c] += cotangent[n, i, j, c]
    return grad


@pytest.mark.parametrize("window, strides", [((2, 2), (1, 1)), ((3, 3), (2, 2))])
def test_max_pool_gradient_goes_to_the_first_of_tied_maxima(window, strides):
    # Values from {0, 1, 2}: most windows have tied maxima.
    x = jax.random.randint(KEY, (2, 7, 7, 2), 0, 3).astype(jnp.float32)
    pads = ((0, 0), (0, 0))
    out_shape = nn.max_pool(x, window, strides=strides).shape
    cotangent = jax.random.normal(jax.random.key(3, impl="rbg"), out_shape)
    want = _first_max_rule_gradient(np.asarray(x), window, strides, np.asarray(cotangent))
    for pool in (
        lambda x: max_pool_taps(x, window, strides, pads),
        lambda x: nn.max_pool(x, window, strides=strides),  # XLA's select-and-scatter agrees
    ):
        got = jax.vjp(pool, x)[1](cotangent)[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_plain_switches_env_var_layer_attribute_and_model_field(monkeypatch, cpu_trace):
    x = jnp.ones((1, 2, 2, 4))
    conv = Conv(8, kernel_size=3, use_bias=False)
    variables = conv.init(KEY, x)

    def primitives(module):
        return str(jax.make_jaxpr(lambda x: module.apply(variables, x))(x))

    assert use_fast_paths() and "conv_general_dilated" not in primitives(conv)
    assert "conv_general_dilated" in primitives(conv.clone(impl="plain"))
    monkeypatch.setenv(IMPL_ENV_VAR, "plain")
    assert not use_fast_paths()
    assert "conv_general_dilated" in primitives(conv)
    assert "reduce_window_max" in str(jax.make_jaxpr(lambda x: max_pool(x, (2, 2)))(x))
    monkeypatch.setenv(IMPL_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=IMPL_ENV_VAR):
        use_fast_paths()
    monkeypatch.delenv(IMPL_ENV_VAR)
    with pytest.raises(ValueError, match="impl"):
        use_fast_paths("im2col")
    for name in ("resnet18", "vgg11", "lenet5"):  # config.model.conv_impl is validated
        with pytest.raises(ValueError, match="conv_impl"):
            get_model(name, num_classes=2, conv_impl="im2col")


@pytest.mark.parametrize(
    ("platform", "impl", "env", "conv2d_custom", "depthwise_custom"),
    [
        ("cpu", "auto", None, True, True),
        ("gpu", "auto", None, False, True),  # only the depthwise 1-D form pays on GPU
        ("tpu", "auto", None, False, False),
        ("gpu", "plain", None, False, False),
        ("gpu", "auto", "plain", False, False),
        ("tpu", "custom", None, True, True),
        ("tpu", "auto", "custom", True, True),
        ("cpu", "custom", "plain", False, False),  # 'plain' wins
    ],
)
def test_the_platform_and_impl_setting_pick_the_formulation(
    monkeypatch, platform, impl, env, conv2d_custom, depthwise_custom
):
    monkeypatch.setattr(conv_module, "trace_platform", lambda: platform)
    if env:
        monkeypatch.setenv(IMPL_ENV_VAR, env)
    x, w = jnp.ones((1, 2, 2, 4)), jnp.ones((3, 3, 4, 4))
    jaxpr = jax.make_jaxpr(lambda x, w: conv2d(x, w, (1, 1), "SAME", impl=impl))(x, w)
    assert ("conv_general_dilated" not in str(jaxpr)) == conv2d_custom
    x1, w1 = jnp.ones((2, 16, 8)), jnp.ones((5, 1, 8))
    layer = DepthwiseConv1D(5, impl=impl)
    variables = layer.init(KEY, x1)
    jaxpr = jax.make_jaxpr(lambda x: layer.apply(variables, x))(x1)
    assert ("conv_general_dilated" not in str(jaxpr)) == depthwise_custom
    got = depthwise_conv1d(x1, w1, 1, (2, 2), impl=impl)
    want = depthwise_conv1d(x1, w1, 1, (2, 2), impl="plain")
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_tracing_under_a_tpu_mesh_uses_the_plain_ops_on_a_cpu_host():
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1").devices
    x, w = (
        jax.ShapeDtypeStruct((1, 2, 2, 4), jnp.float32),
        jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32),
    )
    with jax.set_mesh(jax.sharding.Mesh(np.array(devices), ("data",))):
        assert not use_fast_paths()
        jaxpr = jax.make_jaxpr(lambda x, w: conv2d(x, w, (1, 1), "SAME"))(x, w)
    assert "conv_general_dilated" in str(jaxpr)


def test_resnet_block_values_gradients_and_params_are_the_same_with_either_impl():
    x = jax.random.normal(KEY, (2, 4, 4, 8))  # ResNet-18's stage 4 at 64x64: 4x4 -> 2x2
    blocks = [BasicBlock(16, strides=2, conv_impl=impl) for impl in ("auto", "plain")]
    variables = nn.unbox(blocks[0].init(KEY, x, train=False))
    _assert_same(
        lambda v, x: blocks[1].apply(v, x, train=False),
        lambda v, x: blocks[0].apply(v, x, train=False),
        variables,
        x,
    )
    shapes = [jax.eval_shape(lambda b=b: b.init(KEY, x, train=False)) for b in blocks]
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize(
    "padding, stride, dilation",
    # Stride 1 takes the hand-written gradient (dilated and lopsided too); others autodiff's.
    [("SAME", 1, 1), ("CAUSAL", 1, 1), ((6, 0), 1, 2), ((1, 9), 1, 3), ("VALID", 2, 1),
     ((3, 1), 3, 2)],
)  # fmt: skip
def test_depthwise_conv1d_equals_torch_conv1d_with_groups_equal_to_channels(
    padding, stride, dilation
):
    torch = pytest.importorskip("torch")
    batch, length, channels, size = 2, 20, 6, 5
    layer = DepthwiseConv1D(size, strides=stride, padding=padding, kernel_dilation=dilation)
    x = jax.random.normal(KEY, (batch, length, channels))
    params = nn.unbox(layer.init(KEY, x))["params"]
    params["bias"] = jax.random.normal(KEY, (channels,))
    out, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    cotangent = jax.random.normal(jax.random.key(4, impl="rbg"), out.shape)
    grads = vjp(cotangent)

    window = (size - 1) * dilation + 1
    if padding == "CAUSAL":
        low, high = window - 1, 0
    else:
        ((low, high),) = resolve_padding(
            padding if isinstance(padding, str) else [padding], (length,), (window,), (stride,)
        )
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    weight = torch.tensor(np.asarray(params["kernel"]).transpose(2, 1, 0), requires_grad=True)
    bias = torch.tensor(np.asarray(params["bias"]), requires_grad=True)
    padded = torch.nn.functional.pad(tx.transpose(1, 2), (low, high))
    want = torch.nn.functional.conv1d(
        padded, weight, bias, stride=stride, dilation=dilation, groups=channels
    ).transpose(1, 2)
    want.backward(torch.tensor(np.asarray(cotangent)))
    np.testing.assert_allclose(out, want.detach().numpy(), **TOL)
    np.testing.assert_allclose(grads[1], tx.grad.numpy(), **TOL)
    np.testing.assert_allclose(grads[0]["kernel"], weight.grad.numpy().transpose(2, 1, 0), **TOL)
    np.testing.assert_allclose(grads[0]["bias"], bias.grad.numpy(), **TOL)
    # The same parameters drive a plain nn.Conv with one group per channel.
    reference = nn.Conv(
        channels,
        (size,),
        strides=stride,
        padding=[(low, high)],
        kernel_dilation=dilation,
        feature_group_count=channels,
    )
    np.testing.assert_allclose(out, reference.apply({"params": params}, x), **TOL)


@pytest.mark.parametrize("dilation", [1, 2])
def test_depthwise_conv1d_kernel_gradient_is_the_same_on_every_backend_form(monkeypatch, dilation):
    """On CPU the stride-1 kernel gradient is one grouped convolution; elsewhere one reduction
    per tap (the form measured on GPU). Both must give autodiff's gradient of the plain op."""
    x = jax.random.normal(KEY, (3, 17, 5))
    kernel = jax.random.normal(jax.random.key(2), (7, 1, 5))

    def grads(impl):
        def loss(x, w):
            return jnp.sum(jnp.sin(depthwise_conv1d(x, w, 1, (5, 7), dilation, impl)))

        return jax.grad(loss, argnums=(0, 1))(x, kernel)

    want = grads("plain")
    on_cpu = grads("auto")
    monkeypatch.setattr(conv_module, "trace_platform", lambda: "gpu")
    on_gpu = grads("auto")
    for got in (on_cpu, on_gpu):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, **TOL)


def test_depthwise_conv1d_plain_and_shifted_multiplies_agree():
    x = jax.random.normal(KEY, (2, 12, 5))
    kernel = jax.random.normal(KEY, (7, 1, 5))
    _assert_same(
        lambda x, w: depthwise_conv1d(x, w, 1, (3, 3), impl="plain"),
        lambda x, w: depthwise_conv1d(x, w, 1, (3, 3)),
        x,
        kernel,
    )
    # Shorter than the kernel: the outer taps read only padding and are left out.
    _assert_same(
        lambda x, w: depthwise_conv1d(x, w, 1, (3, 3), impl="plain"),
        lambda x, w: depthwise_conv1d(x, w, 1, (3, 3)),
        x[:, :2],
        kernel,
    )
