"""Convolutions with logically named parameters that route around XLA:CPU's slow paths.

``Conv`` (2-D) and ``DepthwiseConv1D`` compute exactly what ``lax.conv_general_dilated`` computes,
but on CPU they pick, per static shape and at trace time, a formulation XLA:CPU runs fast
(``benchmarks/xla_cpu_slow_paths.py`` measures each choice); a depthwise ``Conv``
(``feature_group_count`` = channels = features) is a sum of per-tap multiplies in every
direction (``depthwise_conv2d_taps``; ``benchmarks/zoo_throughput.py`` measures it). On GPU/TPU
they emit the plain convolution, except ``DepthwiseConv1D``, per-tap on GPU too. Set
``JAXDL_CONV_IMPL=plain`` (read at trace time), a layer's ``impl='plain'`` or a model's
``conv_impl='plain'`` (``config.model.conv_impl``) to force the plain op everywhere; 'custom'
forces the hand-written formulations (the CPU policy) on every backend, e.g. to time them
against cuDNN on a GPU.
"""

import contextlib
import contextvars
import functools
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_KERNEL_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
CONV_BIAS_AXES = ("conv_out",)
# Depthwise 1-D kernel [K, 1, C] as ``nn.Conv(C, (K,), feature_group_count=C)`` stores it.
DEPTHWISE_1D_KERNEL_AXES = ("conv_width", "conv_in", "conv_out")
SEQUENCE_ACTIVATION_AXES = ("batch", "length", "embed")

# He/Kaiming normal with fan_out, as torchvision's ResNet/VGG use for conv kernels.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Padding = str | int | Sequence[int | tuple[int, int]]

IMPL_ENV_VAR = "JAXDL_CONV_IMPL"
CONV_IMPLS = ("auto", "plain", "custom")


def _tuple(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """``value`` as an ``n``-tuple of ints (an int is repeated)."""
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n:
        raise ValueError(f"{what} must have {n} entries, got {value!r}")
    return out


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Traces inside the block emit the plain ops (as ``$JAXDL_CONV_IMPL=plain``): for modules
    compiled for other platforms (a StableHLO export for GPU/TPU)."""
    previous = os.environ.get(IMPL_ENV_VAR)
    os.environ[IMPL_ENV_VAR] = "plain"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[IMPL_ENV_VAR]
        else:
            os.environ[IMPL_ENV_VAR] = previous


_PORTABLE = contextvars.ContextVar("jaxdl_portable_ops", default=False)


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Traces inside the block emit plain ops in forms other runtimes' converters take (ONNX
    through jax2onnx): no pads, FFTs or broadcasts of a symbolic batch (see ``max_pool`` and
    ``jaxdl.audio.features``). Forward values are unchanged; for inference graphs only."""
    token = _PORTABLE.set(True)
    try:
        with plain_ops():
            yield
    finally:
        _PORTABLE.reset(token)


def portable_ops_active() -> bool:
    """Whether the current trace is inside ``portable_ops()``."""
    return _PORTABLE.get()


def impl_setting(impl: str = "auto") -> str:
    """The convolution implementation in force: 'plain' if ``impl`` or ``$JAXDL_CONV_IMPL`` says
    so, else 'custom' if either does, else 'auto' (both validated against ``CONV_IMPLS``)."""
    env = os.environ.get(IMPL_ENV_VAR, "auto") or "auto"
    for source, value in (("impl", impl), (f"${IMPL_ENV_VAR}", env)):
        if value not in CONV_IMPLS:
            raise ValueError(f"{source} must be one of {CONV_IMPLS}, got {value!r}")
    if "plain" in (impl, env):
        return "plain"
    return "custom" if "custom" in (impl, env) else "auto"


def trace_platform() -> str:
    """The platform the current trace targets: the mesh's being traced under (``jax.set_mesh``;
    so an AOT compile for a TPU mesh on a CPU host says 'tpu'), else ``jax.default_backend()``."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def use_fast_paths(impl: str = "auto") -> bool:
    """Whether to use the hand-written CPU formulations: the setting (``impl_setting``) is
    'custom', or 'auto' and the trace targets CPU (``trace_platform``)."""
    setting = impl_setting(impl)
    return setting == "custom" or (setting == "auto" and trace_platform() == "cpu")


def resolve_padding(
    padding: Padding, in_sizes: Sequence[int], window: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]]:
    """Explicit (low, high) pads per spatial dim for 'SAME'/'VALID'/'SAME_LOWER', an int, or a
    sequence of ints or pairs (the forms ``nn.Conv`` accepts; ``window`` is the dilated kernel)."""
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(in_sizes, window, strides, padding.upper()))
    if isinstance(padding, int):
        return [(padding, padding)] * len(in_sizes)
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != len(in_sizes) or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding must give one int or (low, high) pair per dim, got {padding!r}")
    return pads


def _out_size(size: int, pad: tuple[int, int], window: int, stride: int) -> int:
    return (size + pad[0] + pad[1] - window) // stride + 1


def _tap_reads_input(start: int, out: int, stride: int, pad_low: int, size: int) -> bool:
    """Whether rows ``start, start + stride, ...`` (``out`` of them) of the padded input hit a
    real (non-padding) row."""
    return any(0 <= start + i * stride - pad_low < size for i in range(out))


def conv_formulations(
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
) -> tuple[str, str, str]:
    """CPU policy: the formulation ('plain' or 'taps') of the forward pass, the input gradient
    and the kernel gradient of a 2-D convolution with these static sizes.

    XLA:CPU's convolution is 20-100x slower than the equivalent im2col matmul when the (dilated)
    kernel is larger than the feature map it slides over: the input in the forward pass (a 3x3
    conv on ResNet-18's 2x2 stage 4 at 64x64 input) and, for the input gradient, also the output
    (the 3x3/2 conv from 4x4 to 2x2). A 1x1 kernel is one matmul (of the strided input) in every
    direction: with convolutions off YNNPACK (``jaxdl.xla_flags``) XLA's own 1x1 convolution is
    slower than YNNPACK's matmul (the matmul form: MobileNetV3-small's step 17-25 % faster,
    EfficientNet-B0's 15-21 %, ResNet-50's 0-14 %; benchmarks/README.md, issue 13). Elsewhere
    the plain conv is about as fast or faster, so it stays. Measured by
    ``benchmarks/xla_cpu_slow_paths.py`` and ``zoo_throughput.py``.
    """

    def smaller_than_kernel(sizes: Sequence[int]) -> bool:
        return any(
            k > 1 and (k - 1) * d + 1 > n
            for n, k, d in zip(sizes, kernel_size, dilation, strict=True)
        )

    if all(k == 1 for k in kernel_size):
        return "taps", "taps", "taps"
    forward = "taps" if smaller_than_kernel(in_sizes) else "plain"
    input_grad = "taps" if forward == "taps" or smaller_than_kernel(out_sizes) else "plain"
    return forward, input_grad, forward


def conv_as_taps(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    feature_group_count: int = 1,
) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO) as strided slices + one matmul (im2col).

    Kernel taps that read only padding are dropped statically, so a 3x3 conv on a 1x1 map is
    one matmul. The gradient is slices/pads plus matmuls, all fast on XLA:CPU.
    """
    batch, *in_sizes, channels = x.shape
    *kernel_size, group_in, features = kernel.shape
    outs = [
        _out_size(n, p, (k - 1) * d + 1, s)
        for n, p, k, d, s in zip(in_sizes, padding, kernel_size, dilation, strides, strict=True)
    ]
    padded = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)]
    )
    taps, kept = [], []
    for index, tap in enumerate(itertools.product(*(range(k) for k in kernel_size))):
        starts = [t * d for t, d in zip(tap, dilation, strict=True)]
        if not all(
            _tap_reads_input(st, o, s, p[0], n)
            for st, o, s, p, n in zip(starts, outs, strides, padding, in_sizes, strict=True)
        ):
            continue
        limits = [st + (o - 1) * s + 1 for st, o, s in zip(starts, outs, strides, strict=True)]
        taps.append(
            lax.slice(padded, (0, *starts, 0), (batch, *limits, channels), (1, *strides, 1))
        )
        kept.append(index)
    if not taps:  # every tap reads only padding
        return jnp.zeros((batch, *outs, features), jnp.result_type(x, kernel))
    patches = jnp.stack(taps, axis=-2)
    weights = kernel.reshape(-1, group_in, features)
    if len(kept) < weights.shape[0]:
        weights = jnp.stack([weights[i] for i in kept])
    if feature_group_count == 1:
        # One [N*H'*W', T*C] x [T*C, O] matmul on free reshapes of patches and HWIO kernel (a
        # grouped einsum here makes XLA copy the kernel into another layout on every call).
        y = jnp.dot(patches.reshape(-1, len(kept) * group_in), weights.reshape(-1, features))
    else:
        groups = feature_group_count
        patches = patches.reshape(*patches.shape[:-1], groups, group_in)
        weights = weights.reshape(len(kept), group_in, groups, features // groups)
        y = jnp.einsum("...tgc,tcgo->...go", patches, weights)
    return y.reshape(batch, *outs, features)


def _plain_conv(x, kernel, strides, pads, dilation, feature_group_count):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=feature_group_count,
    )


def _depthwise_taps(in_sizes, outs, kernel_size, strides, pads, dilation):
    """(i, j, row start, column start) of each depthwise kernel tap that reads real input."""
    return tuple(
        (i, j, i * dilation[0], j * dilation[1])
        for i in range(kernel_size[0])
        for j in range(kernel_size[1])
        if _tap_reads_input(i * dilation[0], outs[0], strides[0], pads[0][0], in_sizes[0])
        and _tap_reads_input(j * dilation[1], outs[1], strides[1], pads[1][0], in_sizes[1])
    )


def _strided_tap(padded, start, strides, outs):
    """Rows/columns ``start + k * stride`` (``outs`` of each) of ``padded`` [N, H, W, C]."""
    limits = [s + (o - 1) * st + 1 for s, o, st in zip(start, outs, strides, strict=True)]
    return lax.slice(
        padded, (0, *start, 0), (padded.shape[0], *limits, padded.shape[3]), (1, *strides, 1)
    )


# XLA:CPU runs a depthwise convolution as a grouped convolution: its kernel gradient becomes a
# dense C x C convolution plus a diagonal select, and its stride-2 input gradient leaves the fast
# conv library -- together ~50 % of an EfficientNet-B0 step (benchmarks/zoo_throughput.py
# --profile). Here all three directions are per-tap multiplies of strided slices, which fuse
# into one elementwise loop (forward, input gradient) or one reduction per tap (kernel gradient).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_tap_sum(padded, kernel, taps, strides, outs):
    y = None
    for i, j, row, col in taps:
        term = _strided_tap(padded, (row, col), strides, outs) * kernel[i, j, 0]
        y = term if y is None else y + term
    return y


def _depthwise_tap_sum_fwd(padded, kernel, taps, strides, outs):
    return _depthwise_tap_sum(padded, kernel, taps, strides, outs), (padded, kernel)


def _depthwise_tap_sum_bwd(taps, strides, outs, residuals, dy):
    padded, kernel = residuals
    zero = jnp.zeros((), dy.dtype)
    d_padded = None
    for i, j, row, col in taps:
        # The tap's slice, transposed: dy * k spread back to the rows/columns it was read from.
        spread = [
            (start, size - start - (o - 1) * st - 1, st - 1)
            for start, size, o, st in zip((row, col), padded.shape[1:3], outs, strides, strict=True)
        ]
        term = lax.pad(dy * kernel[i, j, 0], zero, [(0, 0, 0), *spread, (0, 0, 0)])
        d_padded = term if d_padded is None else d_padded + term
    tap_grads = _depthwise_kernel_grad(padded, dy, taps, strides, outs)
    rows, cols = (np.array([tap[k] for tap in taps]) for k in (0, 1))
    d_kernel = jnp.zeros(kernel.shape, jnp.float32).at[rows, cols, 0].set(tap_grads)
    return d_padded.astype(padded.dtype), d_kernel.astype(kernel.dtype)


def _depthwise_kernel_grad(padded, dy, taps, strides, outs):
    """[taps, C] float32: sum over batch and positions of each tap's slice times ``dy``.

    One image at a time (a scan): the batch-wide reductions XLA:CPU emits otherwise stream the
    whole batch through memory once per tap, ~6x slower than per-image ones that stay in cache.
    On a batch-sharded CPU mesh (e.g. fake devices in tests) the scan all-gathers the batch, so
    every device computes the whole gradient: equal, not faster; GPU/TPU never take this path.
    """

    def add_image(total, image_and_grad):
        image, grad = (a[None] for a in image_and_grad)
        sums = [
            jnp.sum(_strided_tap(image, (row, col), strides, outs) * grad, (0, 1, 2), jnp.float32)
            for _, _, row, col in taps
        ]
        return total + jnp.stack(sums), None

    start = jnp.zeros((len(taps), padded.shape[3]), jnp.float32)
    return lax.scan(add_image, start, (padded, dy))[0]


_depthwise_tap_sum.defvjp(_depthwise_tap_sum_fwd, _depthwise_tap_sum_bwd)


def depthwise_conv2d_taps(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> jax.Array:
    """Depthwise 2-D convolution (``x`` [N, H, W, C], ``kernel`` [kh, kw, 1, C]) as a sum of
    per-channel multiplies of strided slices; equals ``lax.conv_general_dilated`` with
    ``feature_group_count=C``. Taps that read only padding are dropped statically."""
    batch, *in_sizes, channels = x.shape
    kernel_size = kernel.shape[:2]
    outs = tuple(
        _out_size(n, p, (k - 1) * d + 1, s)
        for n, p, k, d, s in zip(in_sizes, padding, kernel_size, dilation, strides, strict=True)
    )
    taps = _depthwise_taps(in_sizes, outs, kernel_size, strides, padding, dilation)
    if not taps:
        return jnp.zeros((batch, *outs, channels), jnp.result_type(x, kernel))
    padded = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)]
    )
    # Materialised once: left fusable, XLA:CPU recomputes the producer (batch norm, activation)
    # inside the forward fusion for every tap (EfficientNet-B0's stage 1: 37 ms -> gone).
    padded = lax.optimization_barrier(padded)
    return _depthwise_tap_sum(padded, kernel, taps, tuple(strides), outs)


_FORMULATIONS = {"plain": _plain_conv, "taps": conv_as_taps}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_by_direction(x, kernel, strides, pads, dilation, feature_group_count, formulations):
    """The convolution with one formulation per direction (forward, d/dx, d/dkernel)."""
    forward = _FORMULATIONS[formulations[0]]
    return forward(x, kernel, strides, pads, dilation, feature_group_count)


def _conv_by_direction_fwd(x, kernel, strides, pads, dilation, groups, formulations):
    y = _conv_by_direction(x, kernel, strides, pads, dilation, groups, formulations)
    return y, (x, kernel)


def _conv_by_direction_bwd(strides, pads, dilation, groups, formulations, residuals, g):
    x, kernel = residuals
    _, input_grad, kernel_grad = (_FORMULATIONS[f] for f in formulations)
    _, x_vjp = jax.vjp(lambda v: input_grad(v, kernel, strides, pads, dilation, groups), x)
    _, kernel_vjp = jax.vjp(lambda w: kernel_grad(x, w, strides, pads, dilation, groups), kernel)
    return x_vjp(g)[0], kernel_vjp(g)[0]


_conv_by_direction.defvjp(_conv_by_direction_fwd, _conv_by_direction_bwd)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Padding,
    dilation: Sequence[int] = (1, 1),
    feature_group_count: int = 1,
    impl: str = "auto",
) -> jax.Array:
    """2-D convolution, NHWC input and HWIO kernel, equal to ``lax.conv_general_dilated``.

    Off CPU, or with ``impl='plain'`` / ``$JAXDL_CONV_IMPL=plain``, it is that op. On CPU each
    direction uses the formulation ``conv_formulations`` picks for the static shapes; when they
    differ a ``custom_vjp`` joins them (so forward-mode autodiff is then unavailable).
    """
    strides, dilation = tuple(strides), tuple(dilation)
    in_sizes = x.shape[1:3]
    kernel_size = kernel.shape[:2]
    window = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    pads = tuple(tuple(p) for p in resolve_padding(padding, in_sizes, window, strides))
    args = (x, kernel, strides, pads, dilation, feature_group_count)
    if not use_fast_paths(impl):
        return _plain_conv(*args)
    if feature_group_count > 1 and kernel.shape[2:] == (1, x.shape[3]):  # depthwise, multiplier 1
        return depthwise_conv2d_taps(x, kernel, strides, pads, dilation)
    out_sizes = [
        _out_size(n, p, w, s) for n, p, w, s in zip(in_sizes, pads, window, strides, strict=True)
    ]
    formulations = conv_formulations(in_sizes, out_sizes, kernel_size, dilation)
    if len(set(formulations)) == 1:
        return _FORMULATIONS[formulations[0]](*args)
    return _conv_by_direction(*args, formulations)


class Conv(nn.Module):
    """2-D convolution over NHWC inputs whose kernel/bias carry logical axis names.

    Kernel: [kh, kw, in / feature_group_count, out] named
    ('conv_height','conv_width','conv_in','conv_out'); bias: [out] named ('conv_out',). The
    parameter tree is a bare ``nn.Conv``'s (``kernel``/``bias`` directly under this module's
    name) and the result equals it; on CPU the formulation is chosen per shape (``conv2d``).
    ``padding``: 'SAME', 'VALID', 'CIRCULAR', an int or per-dim ints/pairs.

    Input [batch, H, W, C_in] -> output [batch, H', W', features].
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve ``x`` [batch, H, W, C_in] into [batch, H', W', features]."""
        kernel_size = (
            (self.kernel_size,) * 2
            if isinstance(self.kernel_size, int)
            else tuple(self.kernel_size)
        )
        if len(kernel_size) != 2:
            raise ValueError(f"Conv supports 2-D kernels only, got kernel_size={self.kernel_size}")
        if x.ndim != 4:
            raise ValueError(f"Conv expects [batch, H, W, C] input, got shape {x.shape}")
        groups = self.feature_group_count
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(
                f"Conv feature_group_count={groups} must divide the input ({x.shape[-1]}) and "
                f"output ({self.features}) channels"
            )
        strides = _tuple(self.strides, 2, "Conv strides")
        dilation = _tuple(self.kernel_dilation, 2, "Conv kernel_dilation")
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, CONV_KERNEL_AXES),
            (*kernel_size, x.shape[-1] // groups, self.features),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init, CONV_BIAS_AXES),
                (self.features,),
                self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding
        if isinstance(padding, str) and padding.upper() == "CIRCULAR":
            # As nn.Conv: wrap-pad by the dilated kernel, then convolve without padding.
            window = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
            wrap = [(0, 0), *(((w - 1) // 2, w // 2) for w in window), (0, 0)]
            x, padding = jnp.pad(x, wrap, mode="wrap"), "VALID"
        y = conv2d(x, kernel, strides, padding, dilation, groups, self.impl)
        return y if bias is None else y + bias


def depthwise_conv1d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    padding: tuple[int, int],
    dilation: int = 1,
    impl: str = "auto",
) -> jax.Array:
    """Depthwise 1-D convolution: ``x`` [batch, T, C], ``kernel`` [K, 1, C] -> [batch, T', C].

    Equals ``lax.conv_general_dilated`` with ``feature_group_count=C``. On CPU and GPU it is a
    sum of K shifted multiplies: XLA:CPU's grouped convolution is ~20x slower than that (forward
    and gradients; Conformer's K=31, C=144), cuDNN's about 2x (below).
    """
    # The per-tap form wins on GPU too: in Conformer-M's train step on an H200 (bf16, B=64 x 400
    # frames, C=256, K=31) cuDNN's grouped convolution and its gradients took 24.5 of the 58.9 ms
    # of kernel time, and the per-tap form cut the step from 78.8 to 71.0 ms (RESULTS.md).
    setting = impl_setting(impl)
    per_tap = setting == "custom" or (setting == "auto" and trace_platform() in ("cpu", "gpu"))
    if not per_tap:
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride,),
            padding=[padding],
            rhs_dilation=(dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=x.shape[-1],
        )
    length = x.shape[1]
    size = kernel.shape[0]
    out = _out_size(length, padding, (size - 1) * dilation + 1, stride)
    starts = tuple(
        k * dilation
        for k in range(size)
        if _tap_reads_input(k * dilation, out, stride, padding[0], length)
    )
    if not starts:
        return jnp.zeros((x.shape[0], out, x.shape[2]), jnp.result_type(x, kernel))
    padded = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*padding, 0), (0, 0, 0)])
    if stride != 1:
        return _tap_sum(padded, kernel, starts, stride, dilation, out)
    return _unit_stride_tap_sum(padded, kernel, starts, dilation, out)


def _tap_sum(padded, kernel, starts, stride, dilation, out):
    """sum over taps of ``padded`` rows ``start, start + stride, ...`` times kernel[k]."""
    batch, _, channels = padded.shape
    y = None
    for start in starts:
        tap = lax.slice(
            padded, (0, start, 0), (batch, start + (out - 1) * stride + 1, channels), (1, stride, 1)
        )
        term = tap * kernel[start // dilation, 0]
        y = term if y is None else y + term
    return y


# Stride 1 (Conformer's) has a hand-written gradient. Autodiff of the tap sum keeps every tap
# (K shifted copies of the input: 31 for Conformer's kernel) for the kernel's gradient, and
# XLA:CPU fuses the input's producer (the GLU, mask and padding) into each copy: 30 % of the
# convolution module's time. Here the padded input's gradient is its correlation with the kernel
# (a sum of slid copies of the output gradient, one fused loop, like the forward).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _unit_stride_tap_sum(padded, kernel, starts, dilation, out):
    return _tap_sum(padded, kernel, starts, 1, dilation, out)


def _unit_stride_tap_sum_fwd(padded, kernel, starts, dilation, out):
    return _tap_sum(padded, kernel, starts, 1, dilation, out), (padded, kernel)


def _unit_stride_tap_sum_bwd(starts, dilation, out, residuals, dy):
    padded, kernel = residuals
    rows, last = padded.shape[1], max(starts)
    # dy slid by ``start`` rows down, as long as the padded input: zeros above and below.
    dy_padded = lax.pad(dy, jnp.zeros((), dy.dtype), [(0, 0, 0), (last, rows - out, 0), (0, 0, 0)])
    slid = {s: lax.slice_in_dim(dy_padded, last - s, last - s + rows, axis=1) for s in starts}
    d_padded = sum(slid[s] * kernel[s // dilation, 0] for s in starts)
    if trace_platform() == "cpu":
        d_kernel = _unit_stride_kernel_grad(padded, dy, dilation, kernel.shape[0])
    else:
        # The GPU form measured in RESULTS.md: one reduction per tap of its slid copy.
        d_kernel = jnp.zeros(kernel.shape[:1] + kernel.shape[2:], jnp.float32)
        for s in starts:
            tap_grad = jnp.sum(padded * slid[s], axis=(0, 1), dtype=jnp.float32)
            d_kernel = d_kernel.at[s // dilation].set(tap_grad)
    return d_padded.astype(padded.dtype), d_kernel[:, None].astype(kernel.dtype)


def _unit_stride_kernel_grad(padded, dy, dilation, size):
    """[size, C] float32: d_kernel[k, c] = sum over b, t of padded[b, t + k * dilation, c] *
    dy[b, t, c], as one grouped convolution of the channel-major input with the gradient.

    XLA:CPU runs it in its convolution library, reading the input once (so the input's
    producers do not fuse into K windows) instead of K per-tap reductions over materialised slid
    copies: forward and backward of the layer alone at B=8 x 200 x 144, K=31 went from 26-31 ms
    to 5.5 ms (benchmarks/README.md, issue 16). Positions between dilated taps are computed and
    dropped; taps that read only padding come out exactly zero.
    """
    batch, rows, channels = padded.shape
    # Features ordered channel-major (c * batch + b): group c is channel c's batch rows.
    lhs = jnp.transpose(padded, (1, 2, 0)).reshape(1, rows, channels * batch)
    rhs = jnp.transpose(dy, (1, 0, 2))  # [T, batch (in per group), C (one out per group)]
    correlation = lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=(1,),
        padding=[(0, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=channels,
        preferred_element_type=jnp.float32,
    )
    return correlation[0, : (size - 1) * dilation + 1 : dilation]


_unit_stride_tap_sum.defvjp(_unit_stride_tap_sum_fwd, _unit_stride_tap_sum_bwd)


class DepthwiseConv1D(nn.Module):
    """Depthwise (one filter per channel) 1-D convolution over [batch, T, C], e.g. Conformer's
    convolution module.

    Parameters are ``nn.Conv(C, (kernel_size,), feature_group_count=C)``'s: kernel [K, 1, C]
    named ('conv_width','conv_in','conv_out'), bias [C] named ('conv_out',); torch's
    ``Conv1d(C, C, K, groups=C).weight`` [C, 1, K] is this kernel transposed (2, 1, 0).
    ``padding``: 'SAME', 'VALID', 'CAUSAL' (left-pad only), an int or a (low, high) pair.
    On CPU and GPU it is computed as K shifted multiplies (``depthwise_conv1d``).
    """

    kernel_size: int
    strides: int = 1
    padding: str | int | tuple[int, int] = "SAME"
    kernel_dilation: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Filter each channel of ``x`` [batch, T, C] along T; returns [batch, T', C]."""
        if x.ndim != 3:
            raise ValueError(f"DepthwiseConv1D expects [batch, T, C] input, got shape {x.shape}")
        channels = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, DEPTHWISE_1D_KERNEL_AXES),
            (self.kernel_size, 1, channels),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init, CONV_BIAS_AXES),
                (channels,),
                self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        window = (self.kernel_size - 1) * self.kernel_dilation + 1
        if isinstance(self.padding, str) and self.padding.upper() == "CAUSAL":
            padding = (window - 1, 0)
        else:
            (padding,) = resolve_padding(
                [self.padding] if not isinstance(self.padding, str) else self.padding,
                (x.shape[1],),
                (window,),
                (self.strides,),
            )
        y = depthwise_conv1d(x, kernel, self.strides, padding, self.kernel_dilation, self.impl)
        y = y if bias is None else y + bias
        return nn.with_logical_constraint(y, SEQUENCE_ACTIVATION_AXES)
