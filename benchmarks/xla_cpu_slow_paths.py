"""XLA:CPU's slow convolution and pooling paths, op by op, beside the equal fast formulations.

For each op (batch 32, NHWC, f32, jit, median wall ms) it times the forward pass, the input
gradient and the kernel gradient of: the plain op (``lax.conv_general_dilated`` / ``nn.max_pool``),
the hand-written formulation (im2col by strided slices + one matmul, an elementwise max of window
slices with a masked gradient, K shifted multiplies, a depthwise 2-D conv's k*k strided
multiplies), and what ``jaxdl.layers`` picks ("auto").
Rerun it when jax moves: when the plain column matches the fast one, drop the workaround.
It runs under jaxdl's default XLA flags (``jaxdl/xla_flags.py``: convolutions off YNNPACK), as
the ``jaxdl`` command does; ``JAXDL_DEFAULT_XLA_FLAGS=0`` shows XLA's own defaults, where the
64-channel row is YNNPACK's slow convolution.

    python benchmarks/xla_cpu_slow_paths.py            # all ops
    python benchmarks/xla_cpu_slow_paths.py --repeats 9
    JAXDL_DEFAULT_XLA_FLAGS=0 python benchmarks/xla_cpu_slow_paths.py   # XLA's own defaults
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import add_common_args, apply_xla_flags, format_table, run_program, write_report

NAME = "xla_cpu_slow_paths"
COLUMNS = ("op", "impl", "formulation", "forward_ms", "input_grad_ms", "kernel_grad_ms")


def _time_ms(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> float:
    """Median wall ms of the jitted ``fn(*args)`` after one compile-and-run call."""
    import jax

    compiled = jax.jit(fn)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _directions(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> dict[str, float]:
    """Forward, d/d(first arg) and d/d(second arg, if any) times of ``fn``."""
    import jax
    import jax.numpy as jnp

    def grad_of(index: int) -> Callable[..., Any]:
        def loss(*args):
            out = fn(*args)
            return jnp.vdot(out, jnp.ones_like(out) * 0.5)

        return jax.grad(loss, argnums=index)

    times = {"forward_ms": _time_ms(fn, args, repeats)}
    times["input_grad_ms"] = _time_ms(grad_of(0), args, repeats)
    if len(args) > 1:
        times["kernel_grad_ms"] = _time_ms(grad_of(1), args, repeats)
    return times


def cases() -> list[dict[str, Any]]:
    """Each op: name, arguments, and plain / fast / auto implementations."""
    import flax.linen as nn
    import jax

    from jaxdl.layers import conv2d, depthwise_conv1d, depthwise_conv2d_taps, max_pool
    from jaxdl.layers.conv import conv_as_taps, conv_formulations
    from jaxdl.layers.pooling import max_pool_taps

    key = jax.random.PRNGKey(0)
    pads = ((1, 1), (1, 1))
    out = []
    convs = [  # (size, in, out, stride): ResNet-18 at 64x64 has the first, second, fifth and last
        (16, 64, 64, 1),  # YNNPACK's 64-channel conv: compare with --xla-flags (README)
        (16, 128, 128, 1),
        (2, 512, 512, 1),
        (2, 256, 256, 1),
        (4, 512, 512, 1),
        (4, 256, 512, 2),
    ]
    for size, cin, cout, stride in convs:
        x = jax.random.normal(key, (32, size, size, cin))
        w = jax.random.normal(key, (3, 3, cin, cout)) * 0.02
        strides = (stride, stride)
        out_size = (size + 2 - 3) // stride + 1
        picked = conv_formulations((size, size), (out_size, out_size), (3, 3), (1, 1))
        out.append(
            {
                "op": f"conv 3x3/{stride}, {cin}->{cout}, {size}x{size}",
                "args": (x, w),
                "plain": lambda x, w, s=strides: conv2d(x, w, s, pads, impl="plain"),
                "fast": (
                    "im2col taps",
                    lambda x, w, s=strides: conv_as_taps(x, w, s, pads, (1, 1)),
                ),
                "auto": ("/".join(picked), lambda x, w, s=strides: conv2d(x, w, s, pads)),
            }
        )
    x = jax.random.normal(key, (32, 32, 32, 64))
    out.append(
        {
            "op": "max-pool 3x3/2, 32x32x64",
            "args": (x,),
            "plain": lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads),
            "fast": ("slices + mask", lambda x: max_pool_taps(x, (3, 3), (2, 2), pads)),
            "auto": ("slices + mask", lambda x: max_pool(x, (3, 3), (2, 2), pads)),
        }
    )
    x = jax.random.normal(key, (8, 200, 144))
    w = jax.random.normal(key, (31, 1, 144)) * 0.1
    out.append(
        {
            "op": "depthwise 1-D conv K=31, B=8, T=200, C=144",
            "args": (x, w),
            "plain": lambda x, w: depthwise_conv1d(x, w, 1, (15, 15), impl="plain"),
            "fast": ("31 shifted multiplies", lambda x, w: depthwise_conv1d(x, w, 1, (15, 15))),
            "auto": ("31 shifted multiplies", lambda x, w: depthwise_conv1d(x, w, 1, (15, 15))),
        }
    )
    depthwise = [  # (size, channels, kernel, stride): EfficientNet-B0 blocks at 96x96 input
        (48, 96, 3, 2),  # stage 2's first block (stride-2 input gradient off the fast library)
        (24, 144, 3, 1),
        (12, 240, 5, 1),
        (6, 672, 5, 1),
    ]
    for size, channels, k, stride in depthwise:
        x = jax.random.normal(key, (32, size, size, channels))
        w = jax.random.normal(key, (k, k, 1, channels)) * 0.1
        strides, same = (stride, stride), ((k // 2, k // 2),) * 2
        taps = f"{k * k} strided multiplies"
        out.append(
            {
                "op": f"depthwise {k}x{k}/{stride}, C={channels}, {size}x{size}",
                "args": (x, w),
                "plain": lambda x, w, s=strides, p=same, c=channels: conv2d(
                    x, w, s, p, feature_group_count=c, impl="plain"
                ),
                "fast": (
                    taps,
                    lambda x, w, s=strides, p=same: depthwise_conv2d_taps(x, w, s, p, (1, 1)),
                ),
                "auto": (
                    taps,
                    lambda x, w, s=strides, p=same, c=channels: conv2d(
                        x, w, s, p, feature_group_count=c
                    ),
                ),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement")
    args = parser.parse_args(argv)
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    import jax

    rows = []
    load_before = os.getloadavg()[0]
    for case in cases():
        variants = [
            ("plain", ("XLA op", case["plain"])),
            ("fast", case["fast"]),
            ("auto", case["auto"]),
        ]
        for impl, (formulation, fn) in variants:
            row = {"op": case["op"], "impl": impl, "formulation": formulation}
            row |= _directions(fn, case["args"], args.repeats)
            rows.append(row)
            print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
    load = [load_before, os.getloadavg()[0]]
    print()
    print(
        f"jax {jax.__version__}, {jax.default_backend()}, "
        f"1-min load average {load[0]:.2f} -> {load[1]:.2f}"
    )
    print(format_table(rows, COLUMNS))
    path = write_report(
        NAME, {"load_average_1min": load, "repeats": args.repeats, "results": rows}, args.out
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_program(main)
