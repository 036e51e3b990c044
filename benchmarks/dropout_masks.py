"""Dropout masks: ``jaxdl.layers.Dropout``'s packed Threefry fields against flax's
``jax.random.bernoulli`` masks, alone and inside a Conformer's train step, next to PyTorch's
dropout in the same run.

Rows, interleaved over ``--rounds`` in one process (the same compiled programs each round):

- ``mask: bernoulli`` / ``mask: jaxdl``: ``x * mask / keep`` on an activation of the speech
  recipe's feed-forward shape (B=16 x 75 encoder frames x 576 at CPU size), jitted;
- ``conformer: no dropout`` / ``conformer: bernoulli`` / ``conformer: jaxdl``: forward and
  backward of the tiny speech Conformer's 4 blocks (d=144, 4 heads, FFN 576, kernel 15, relative
  positions) on that batch, at ``--rate`` (default 0.1: ``experiments/speech_conformer.py``);
  the bernoulli row swaps flax's mask back in at trace time, everything else equal;
- ``torch dropout`` (peer, fresh process, one thread per core): ``F.dropout`` on the same shape.

    python benchmarks/dropout_masks.py           # CPU: B=16 x 75 (about 2 minutes here)
    python benchmarks/dropout_masks.py --full    # GPU: B=64 x 400, d=256 (Conformer-M width)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per row and round")
    parser.add_argument("--no-peer", action="store_true", help="skip the torch row")
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_dir:
        parser.error("--profile-dir is not supported by this benchmark")
    if not 0.0 < args.rate < 1.0:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")
    args.batch, args.frames, args.d_model = (64, 400, 256) if args.full else (16, 75, 144)
    return args


def bernoulli_mask(key, shape, rate):
    """flax ``nn.Dropout``'s mask."""
    import jax

    return jax.random.bernoulli(key, 1.0 - rate, shape)


def compiled_programs(args: argparse.Namespace) -> dict:
    """Row name -> a zero-argument call that runs one compiled program and blocks."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxdl.layers.dropout as dropout_module
    from jaxdl.layers import ConformerBlock

    ffn_shape = (args.batch, args.frames, 4 * args.d_model)
    key = jax.random.key(0)
    x = jax.random.normal(key, ffn_shape)
    keep = 1.0 - args.rate

    def mask_program(mask_fn):
        fn = jax.jit(lambda k, x: jnp.where(mask_fn(k, x.shape, args.rate), x / keep, 0.0))
        return lambda: jax.block_until_ready(fn(key, x))

    class Encoder(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, x, mask):
            for index in range(4):
                block = ConformerBlock(
                    num_heads=4,
                    ffn_dim=4 * args.d_model,
                    conv_kernel=15,
                    dropout_rate=self.rate,
                    name=f"block{index}",
                )
                x = block(x, mask, train=True)
            return x

    inputs = jax.random.normal(key, (args.batch, args.frames, args.d_model))
    valid = jnp.ones(inputs.shape[:2], bool)

    def conformer_program(rate, mask_fn):
        model = Encoder(rate)
        variables = model.init({"params": key, "dropout": key}, inputs, valid)

        def loss(params, step_key):
            out, _ = model.apply(
                {**variables, "params": params},
                inputs,
                valid,
                rngs={"dropout": step_key},
                mutable=["batch_stats"],
            )
            return jnp.mean(jnp.square(out))

        packed = dropout_module.dropout_keep_mask
        dropout_module.dropout_keep_mask = mask_fn  # read when the step is traced, just below
        try:
            compiled = jax.jit(jax.grad(loss)).lower(variables["params"], key).compile()
        finally:
            dropout_module.dropout_keep_mask = packed
        return lambda: jax.block_until_ready(compiled(variables["params"], key))

    packed = dropout_module.dropout_keep_mask
    return {
        "mask: bernoulli": mask_program(bernoulli_mask),
        "mask: jaxdl": mask_program(packed),
        "conformer: no dropout": conformer_program(0.0, packed),
        "conformer: bernoulli": conformer_program(args.rate, bernoulli_mask),
        "conformer: jaxdl": conformer_program(args.rate, packed),
    }


def interleaved_rows(programs: dict, rounds: int, steps: int) -> list[dict]:
    """Each program's per-round mean ms over ``steps`` calls, the rounds interleaved."""
    for run in programs.values():
        run()  # warm-up (first call)
    per_round = {name: [] for name in programs}
    for _ in range(rounds):
        for name, run in programs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            per_round[name].append((time.perf_counter() - start) / steps * 1e3)
    return [
        {
            "row": name,
            "ms_median": statistics.median(values),
            "ms_min": min(values),
            "ms_per_round": [round(v, 3) for v in values],
        }
        for name, values in per_round.items()
    ]


def torch_worker(spec: dict) -> dict:
    """The peer row: ``F.dropout`` (training) on the feed-forward activation."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)
    x = torch.randn(*spec["shape"])

    def run() -> None:
        torch.nn.functional.dropout(x, spec["rate"], training=True)

    timing = common.time_steps(run, 3, spec["steps"] * spec["rounds"])
    return {
        "row": f"torch {torch.__version__} dropout",
        "ms_median": timing["step_ms_median"],
        "ms_min": timing["step_ms_min"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.torch_worker:
        import json

        print(json.dumps(torch_worker(json.loads(args.torch_worker))))
        return
    common.apply_xla_flags(args.xla_flags)
    rows = interleaved_rows(compiled_programs(args), args.rounds, args.steps)
    if not args.no_peer:
        spec = {
            "shape": [args.batch, args.frames, 4 * args.d_model],
            "rate": args.rate,
            "steps": args.steps,
            "rounds": args.rounds,
            "threads": os.cpu_count() or 1,
        }
        rows.append(common.run_torch_worker(__file__, spec))
    by_name = {row["row"]: row["ms_median"] for row in rows}
    ratios = {
        "mask_jaxdl_over_bernoulli": by_name["mask: jaxdl"] / by_name["mask: bernoulli"],
        "conformer_jaxdl_over_bernoulli": by_name["conformer: jaxdl"]
        / by_name["conformer: bernoulli"],
    }
    print(common.format_table(rows, ["row", "ms_median", "ms_min"]))
    print(", ".join(f"{name} {value:.3f}" for name, value in ratios.items()))
    path = common.write_report(
        "dropout_masks", {"args": vars(args), "rows": rows, "ratios": ratios}, args.out
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    common.run_program(main)
