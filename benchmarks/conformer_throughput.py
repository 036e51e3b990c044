"""Conformer encoder train step: jaxdl's ``ConformerBlock`` stack next to torchaudio's
``Conformer`` (PyTorch eager and torch.compile).

The CPU workload is the conformer case of ../shared/peers/cpu_peers.py: torchaudio's
``Conformer(input_dim=144, num_heads=4, ffn_dim=576, num_layers=4,
depthwise_conv_kernel_size=31)`` (dropout 0, BatchNorm in the convolution module, training
mode) on features already at the encoder's frame rate, B=8 x 200 frames x 144, every frame real
(``lengths`` = 200), loss ``mean(output ** 2)``, AdamW lr 3e-4 (torch's defaults otherwise:
betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every parameter), f32. torchaudio's
``Conformer`` has no front end, positions or head, so neither side has any here.

- **jaxdl** (two rows): a small wrapper (``ConformerEncoder`` below) that casts the features to
  the compute dtype, as ``ConformerCTC`` does, and runs ``num_layers``
  ``jaxdl.layers.ConformerBlock`` with the padding mask of ``lengths`` -- ``ConformerCTC``'s
  blocks without its ``ConvSubsampling``, added sinusoids ('absolute') and CTC head. Trained by
  the library's step: ``sharded_state_initializer`` + ``make_train_step`` + ``ShardedStep`` with
  a small task whose loss is the peer's, AdamW from ``build_optimizer`` (constant schedule), one
  device-resident batch, each step blocking on its results. ``positions='absolute'`` (plain
  MHSA: torchaudio's attention; the same 1,942,848 parameters as torchaudio, checked) and
  ``'relative'`` (Transformer-XL relative-position attention, what experiments/
  speech_conformer.py trains; 84,096 more parameters: 4 x (144 x 144 + 2 x 144)).
- **torch** eager (and ``torch.compile`` with ``--peer-compile``): torchaudio's ``Conformer``
  written out below (torchaudio cannot be installed beside torch 2.13 here), in a fresh process
  each, with ``OMP_WAIT_POLICY=PASSIVE``, ``torch.set_flush_denormal(True)`` and one thread per
  core jax uses.

Each of ``--rounds`` interleaved rounds times jaxdl absolute, jaxdl relative, torch eager and
(``--peer-compile``) torch.compile. The headline is the median over rounds of
``torch best step ms / jaxdl absolute step ms`` (the issue's target: >= 1, jaxdl no slower than
torch's best).

    python benchmarks/conformer_throughput.py                  # CPU: 3 rounds, torch eager
    python benchmarks/conformer_throughput.py --peer-compile   # ... plus torch.compile
    python benchmarks/conformer_throughput.py --quick          # smoke test: 1 round, 2 steps
    python benchmarks/conformer_throughput.py --quick --layers 1 --frames 32 --d-model 32 \\
        --ffn-dim 64 --kernel 7 --batch-size 2                 # about 20 s on 2 cores
    python benchmarks/conformer_throughput.py --full           # GPU: Conformer-M, B=64 x 400

``--full`` (GPU) times the jaxdl step for Conformer-M (d=256, 16 layers, 4 heads, FFN 1024,
kernel 31; ``--full-sizes s,m`` adds Conformer-S, d=144, FFN 576) at B=64 x 400 frames with
bf16 compute and f32 parameters, the loss of ../shared/peers/torch_conformer.py (a Linear head to
32 outputs, ``logsumexp`` over them, mean; AdamW lr 1e-3), after running that script (when
present; it times torchaudio S and M eager and compiled under bf16 autocast) so that jax's GPU
memory pool does not squeeze it. Without a GPU it prints "not measured".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    run_torch_worker,
    time_steps,
    write_report,
)
from op_profile import profile_steps

NAME = "conformer_throughput"
# The peers' CPU conformer case (cpu_peers.py CONF=dict(B=8, T=200, d=144, L=4, h=4, ffn=576,
# k=31)).
CPU_WORKLOAD = {
    "batch_size": 8,
    "frames": 200,
    "d_model": 144,
    "layers": 4,
    "heads": 4,
    "ffn_dim": 576,
    "kernel": 31,
}
POSITIONS = ("absolute", "relative")
# torch_conformer.py: name, d, layers, heads, ffn; B=64, T=400, kernel 31, bf16 autocast, a
# Linear(d, 32) head, AdamW lr 1e-3.
FULL_MODELS = {
    "s": ("Conformer-S", 144, 16, 4, 576),
    "m": ("Conformer-M", 256, 16, 4, 1024),
}
FULL_BATCH, FULL_FRAMES, FULL_KERNEL, FULL_HEAD, FULL_LR = 64, 400, 31, 32, 1e-3
# 400 frames = 16 s of audio: 10 ms hop, 4x subsampling (torch_conformer.py's audio-s/s).
SECONDS_PER_FRAME = 0.04
# rounds, untimed warm-up steps (the first one compiles), timed steps
CPU_SCHEDULE = {"rounds": 3, "warmup": 3, "steps": 10}
QUICK_SCHEDULE = {"rounds": 1, "warmup": 1, "steps": 2}
FULL_SCHEDULE = {"rounds": 1, "warmup": 5, "steps": 20}
# torch.optim.AdamW defaults (the peer passes lr only).
LEARNING_RATE, WEIGHT_DECAY = 3e-4, 0.01
PEER_SCRIPT_CANDIDATES = (
    os.path.join(REPO_ROOT, "shared", "peers", "torch_conformer.py"),
    os.path.join(REPO_ROOT, "..", "shared", "peers", "torch_conformer.py"),
)
TABLE_COLUMNS = (
    "path",
    "step_ms",
    "cpu_ms_per_step",
    "frames_per_s",
    "first_step_s",
    "first_loss",
    "params",
)
ROUND_COLUMNS = (
    "round",
    "load_1min",
    "jaxdl_abs_ms",
    "jaxdl_rel_ms",
    "torch_eager_ms",
    "torch_compile_ms",
    "ratio",
    "ratio_rel",
)
FULL_COLUMNS = (
    "model",
    "framework",
    "batch",
    "frames",
    "step_ms",
    "audio_s_per_s",
    "params_M",
    "status",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 2 steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="frames per utterance")
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--ffn-dim", type=int, default=None)
    parser.add_argument("--kernel", type=int, default=None, help="depthwise kernel (odd)")
    parser.add_argument(
        "--positions",
        default=",".join(POSITIONS),
        help="jaxdl rows to time: absolute, relative or both (comma-separated)",
    )
    parser.add_argument(  # jaxdl.layers.CONV_IMPLS, not imported: the torch worker has no jax
        "--conv-impl", choices=("auto", "plain", "custom"), default="auto", help="jaxdl conv_impl"
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (first compiles)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--no-peer", action="store_true", help="skip PyTorch")
    parser.add_argument("--peer-compile", action="store_true", help="also torch.compile")
    parser.add_argument(
        "--full-sizes", default="m", help="--full: Conformer sizes to time (s, m; comma-separated)"
    )
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full and args.quick:
        parser.error("--quick and --full exclude each other")
    schedule = FULL_SCHEDULE if args.full else QUICK_SCHEDULE if args.quick else CPU_SCHEDULE
    for field, default in {**CPU_WORKLOAD, **schedule}.items():
        if getattr(args, field) is None:
            setattr(args, field, default)
    for field in (*CPU_WORKLOAD, *CPU_SCHEDULE):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    if args.d_model % args.heads:
        parser.error("--d-model must be a multiple of --heads")
    if args.d_model % 2:
        parser.error("--d-model must be even (relative positions are sinusoids)")
    if args.kernel % 2 == 0:
        parser.error("--kernel must be odd (torchaudio's 'SAME' padding)")
    args.positions = tuple(p.strip() for p in args.positions.split(",") if p.strip())
    if not args.positions or set(args.positions) - set(POSITIONS):
        parser.error(f"--positions must name some of {POSITIONS}")
    args.full_sizes = tuple(s.strip().lower() for s in args.full_sizes.split(",") if s.strip())
    if not args.full_sizes or set(args.full_sizes) - set(FULL_MODELS):
        parser.error(f"--full-sizes must name some of {tuple(FULL_MODELS)}")
    return args


def workload_of(args: argparse.Namespace) -> dict[str, Any]:
    """The CPU workload fields of ``args`` (recorded in the report, sent to the torch worker)."""
    return {field: getattr(args, field) for field in CPU_WORKLOAD}


def torchaudio_param_count(d: int, layers: int, ffn: int, kernel: int) -> int:
    """Parameters of torchaudio's ``Conformer`` (every Linear / Conv1d with bias): per layer two
    feed-forward modules (LayerNorm, d -> ffn, ffn -> d), the attention LayerNorm, in- and
    out-projections (4 d^2 + 4 d), the convolution module (LayerNorm, pointwise d -> 2d,
    depthwise d x kernel, BatchNorm, pointwise d -> d) and the final LayerNorm."""
    feed_forward = 2 * d + (d * ffn + ffn) + (ffn * d + d)
    attention = 2 * d + 4 * d * d + 4 * d
    conv = 2 * d + (2 * d * d + 2 * d) + (d * kernel + d) + 2 * d + (d * d + d)
    return layers * (2 * feed_forward + attention + conv + 2 * d)


def measure_steps(
    run_step: Callable[[], None], warmup: int, steps: int, frames_per_step: int
) -> dict[str, Any]:
    """``common.time_steps`` with ``step_ms`` the median, frames/s and audio-s/s from it."""
    timed = time_steps(run_step, warmup, steps)
    median = timed.pop("step_ms_median")
    frames_per_s = frames_per_step / (median / 1e3)
    return {
        **timed,
        "step_ms": median,
        "frames_per_s": frames_per_s,
        "audio_s_per_s": frames_per_s * SECONDS_PER_FRAME,
    }


# ------------------------------------------------------------------------------------------------
# jaxdl: ConformerBlocks through the library's train step


def encoder_module():
    """The ``ConformerEncoder`` wrapper class (built lazily: flax and jax load after the XLA
    flags are set)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdl.layers import ConformerBlock, Dense, lengths_to_mask
    from jaxdl.layers.embeddings import EMBED_ACTIVATION_AXES

    class ConformerEncoder(nn.Module):
        """features [B, T, d] + lengths [B] -> encoder output [B, T, d] (``head`` 0) or float32
        logits [B, T, head]: ``ConformerCTC``'s blocks without its front end, positions and
        CTC head; with ``head`` > 0 a Dense to ``head`` outputs (torch_conformer.py's)."""

        d_model: int
        num_layers: int
        num_heads: int
        ffn_dim: int
        conv_kernel: int
        positions: str
        head: int = 0
        conv_impl: str = "auto"
        dtype: Any = jnp.float32

        @nn.compact
        def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool):
            x = nn.with_logical_constraint(features.astype(self.dtype), EMBED_ACTIVATION_AXES)
            padding_mask = lengths_to_mask(lengths, x.shape[1])
            for index in range(self.num_layers):
                x = ConformerBlock(
                    num_heads=self.num_heads,
                    ffn_dim=self.ffn_dim,
                    conv_kernel=self.conv_kernel,
                    positions=self.positions,
                    conv_norm="batch",
                    dropout_rate=0.0,
                    dtype=self.dtype,
                    conv_impl=self.conv_impl,
                    name=f"block{index}",
                )(x, padding_mask, train=train)
            if self.head:
                axes = ("embed", "vocab")
                x = Dense(self.head, kernel_axes=axes, dtype=self.dtype, name="head")(x)
            return x.astype(jnp.float32)

    return ConformerEncoder


def encoder_task(loss_kind: str, frames: int, d_model: int):
    """A ``jaxdl.tasks.Task`` feeding ``features``/``lengths`` to the model, with the peer's loss:
    ``mean(output ** 2)`` ('square', cpu_peers.py) or ``mean(logsumexp(logits, -1))``
    ('logsumexp', torch_conformer.py). Training only: evaluation is not implemented."""
    import jax
    import jax.numpy as jnp

    from jaxdl.tasks.base import Field, Task

    class EncoderLoss(Task):
        name = "conformer_bench"
        throughput_unit = "utterances"

        def batch_spec(self):
            return {"features": Field(np.float32, (frames, d_model)), "lengths": Field(np.int32)}

        def model_inputs(self, batch):
            return (batch["features"], batch["lengths"]), {}

        def loss(self, forward, batch):
            args, kwargs = self.model_inputs(batch)
            out = forward(*args, **kwargs)
            if loss_kind == "square":
                return jnp.mean(jnp.square(out)), {}
            return jnp.mean(jax.nn.logsumexp(out, axis=-1)), {}

        def eval_sums(self, forward, batch):
            raise NotImplementedError

        def summarize(self, sums):
            raise NotImplementedError

        def predict(self, forward, inputs):
            raise NotImplementedError

    return EncoderLoss()


def measure_jaxdl(
    workload: dict[str, Any],
    positions: str,
    warmup: int,
    steps: int,
    *,
    dtype: str = "float32",
    head: int = 0,
    learning_rate: float = LEARNING_RATE,
    conv_impl: str = "auto",
    profile_dir: str | None = None,
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """Builds, compiles (on the first step) and times the jaxdl train step on one synthetic
    batch (features N(0, 1), every frame real). Returns the first measurement and a function
    that times the steps again (later rounds). With ``profile_dir``, a few more steps are
    traced there and their op table printed."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from jaxdl import config_sections as sections
    from jaxdl.optim import build_optimizer, build_schedule
    from jaxdl.parallel import batch_sharding, mesh_from_config
    from jaxdl.parallel.rules import rules_with_overrides
    from jaxdl.train import ShardedStep, count_params, make_train_step
    from jaxdl.train.state import sharded_state_initializer

    batch, frames, d = workload["batch_size"], workload["frames"], workload["d_model"]
    model = encoder_module()(
        d_model=d,
        num_layers=workload["layers"],
        num_heads=workload["heads"],
        ffn_dim=workload["ffn_dim"],
        conv_kernel=workload["kernel"],
        positions=positions,
        head=head,
        conv_impl=conv_impl,
        dtype=jnp.dtype(dtype),
    )
    task = encoder_task("logsumexp" if head else "square", frames, d)
    mesh_config = sections.mesh("dp")
    mesh = mesh_from_config(mesh_config)
    rules = rules_with_overrides(mesh_config.get("rules"))
    # torch.optim.AdamW(lr) as the peers call it: decay on every parameter, no clipping.
    optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": learning_rate,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": WEIGHT_DECAY,
            "decay_bias_and_norm": True,
        }
    )
    schedule = build_schedule(
        ml_collections.ConfigDict({"name": "constant"}),
        base_learning_rate=learning_rate,
        steps_per_epoch=1,
        total_steps=max(2, warmup + steps),
    )
    tx = build_optimizer(optimizer, schedule)
    start = time.perf_counter()
    _, shardings, initialize = sharded_state_initializer(
        model, tx, lambda: task.init_inputs(batch), mesh, rules
    )
    state = initialize(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    host = {
        "features": rng.standard_normal((batch, frames, d), dtype=np.float32),
        "lengths": np.full((batch,), frames, np.int32),
    }
    data_sharding = batch_sharding(mesh, rules)
    device_batch = jax.device_put(host, data_sharding)
    step = ShardedStep(
        make_train_step(task), mesh, shardings, data_sharding, returns_state=True, rules=rules
    )
    losses: list[Any] = []

    def run_step() -> None:
        nonlocal state
        state, metrics = step(state, device_batch)
        jax.block_until_ready((state, metrics))
        if not losses:
            losses.append(metrics["loss"])

    def remeasure() -> dict[str, Any]:
        return measure_steps(run_step, warmup, steps, batch * frames)

    params = count_params(state.params)
    first = remeasure()  # first_step_s: tracing + compilation + the first step
    head_params = count_params(state.params.get("head", {}))
    if profile_dir:
        label = f"conformer_d{d}_l{workload['layers']}_{positions}_{conv_impl}_{dtype}"
        profile_steps(run_step, profile_dir, label)
    return {
        "path": f"jaxdl ConformerBlock x{workload['layers']} ({positions}, {dtype}, {conv_impl})",
        "params": params - head_params,
        "head_params": head_params,
        "first_loss": float(losses[0]),
        "init_s": init_seconds,
        **first,
    }, remeasure


# ------------------------------------------------------------------------------------------------
# PyTorch (CPU): runs in its own process via --torch-worker


def torch_conformer(d: int, heads: int, ffn: int, layers: int, kernel: int):
    """torchaudio's ``Conformer(input_dim=d, num_heads=heads, ffn_dim=ffn, num_layers=layers,
    depthwise_conv_kernel_size=kernel)`` with its defaults (dropout 0, BatchNorm1d, convolution
    after attention), module for module.

    Written after torchaudio/models/conformer.py (``_lengths_to_padding_mask``,
    ``_ConvolutionModule``, ``_FeedForwardModule``, ``ConformerLayer``, ``Conformer``),
    BSD-2-Clause, Copyright (c) 2017 Facebook Inc. (Soumith Chintala), all rights reserved,
    https://github.com/pytorch/audio; the same layer as tests/test_conformer.py's port, here in
    torchaudio's time-major layout with its key padding mask. torchaudio itself cannot be
    installed beside torch 2.13 in this environment.
    """
    import torch
    from torch import nn

    def lengths_to_padding_mask(lengths: torch.Tensor) -> torch.Tensor:
        batch_size = lengths.shape[0]
        max_length = int(torch.max(lengths).item())
        return torch.arange(max_length, device=lengths.device, dtype=lengths.dtype).expand(
            batch_size, max_length
        ) >= lengths.unsqueeze(1)

    class ConvolutionModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_norm = nn.LayerNorm(d)
            self.sequential = nn.Sequential(
                nn.Conv1d(d, 2 * d, 1, stride=1, padding=0, bias=True),
                nn.GLU(dim=1),
                nn.Conv1d(d, d, kernel, stride=1, padding=(kernel - 1) // 2, groups=d, bias=True),
                nn.BatchNorm1d(d),
                nn.SiLU(),
                nn.Conv1d(d, d, kernel_size=1, stride=1, padding=0, bias=True),
                nn.Dropout(0.0),
            )

        def forward(self, x):  # [B, T, D]
            x = self.layer_norm(x).transpose(1, 2)
            return self.sequential(x).transpose(1, 2)

    def feed_forward() -> nn.Module:
        return nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, ffn, bias=True),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Linear(ffn, d, bias=True),
            nn.Dropout(0.0),
        )

    class ConformerLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn1 = feed_forward()
            self.self_attn_layer_norm = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.0)
            self.self_attn_dropout = nn.Dropout(0.0)
            self.conv_module = ConvolutionModule()
            self.ffn2 = feed_forward()
            self.final_layer_norm = nn.LayerNorm(d)

        def forward(self, x, key_padding_mask):  # x: [T, B, D]
            x = self.ffn1(x) * 0.5 + x
            residual = x
            x = self.self_attn_layer_norm(x)
            x, _ = self.self_attn(
                query=x, key=x, value=x, key_padding_mask=key_padding_mask, need_weights=False
            )
            x = self.self_attn_dropout(x) + residual
            x = x + self.conv_module(x.transpose(0, 1)).transpose(0, 1)
            x = self.ffn2(x) * 0.5 + x
            return self.final_layer_norm(x)

    class Conformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conformer_layers = nn.ModuleList([ConformerLayer() for _ in range(layers)])

        def forward(self, features, lengths):  # [B, T, D], [B]
            mask = lengths_to_padding_mask(lengths)
            x = features.transpose(0, 1)
            for layer in self.conformer_layers:
                x = layer(x, mask)
            return x.transpose(0, 1), lengths

    return Conformer()


def measure_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Times the peer's train step (AdamW lr 3e-4, torch defaults otherwise) on one batch:
    ``model(features, lengths)[0].square().mean()``, as cpu_peers.py."""
    import torch

    torch.manual_seed(0)
    # XLA flushes denormals on CPU; without this torch's GEMMs slow down ~10x (the peers' note).
    torch.set_flush_denormal(True)
    torch.set_num_threads(spec["threads"])
    batch, frames, d = spec["batch_size"], spec["frames"], spec["d_model"]
    model = torch_conformer(d, spec["heads"], spec["ffn_dim"], spec["layers"], spec["kernel"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    forward = torch.compile(model) if spec["compiled"] else model
    features = torch.randn(batch, frames, d)
    lengths = torch.full((batch,), frames)
    losses: list[float] = []

    def run_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = forward(features, lengths)[0].square().mean()
        loss.backward()
        optimizer.step()
        if not losses:
            losses.append(float(loss))

    result = measure_steps(run_step, spec["warmup"], spec["steps"], batch * frames)
    return {
        "path": f"torch {torch.__version__} {'compile' if spec['compiled'] else 'eager'}",
        "params": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0],
        "torch_threads": torch.get_num_threads(),
        **result,
    }


def run_torch_cpu_peer(spec: dict[str, Any], compiled: bool) -> dict[str, Any]:
    """Runs ``measure_torch`` in a fresh process (``common.run_torch_worker``)."""
    return run_torch_worker(__file__, {**spec, "compiled": compiled})


# ------------------------------------------------------------------------------------------------
# GPU (--full)


def probe_platform() -> str:
    """jax's default platform, asked in a subprocess so that this process does not claim the
    GPU's memory before the torch peer runs."""
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = probe.stdout.strip().splitlines()
    return lines[-1] if probe.returncode == 0 and lines else "unknown"


def run_torch_gpu_peer(timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Runs ``torch_conformer.py`` (torchaudio S and M, eager and compiled, bf16 autocast) and
    parses its lines."""
    script = next((path for path in PEER_SCRIPT_CANDIDATES if os.path.isfile(path)), None)
    if script is None:
        print(f"torch peer skipped: torch_conformer.py not found in {list(PEER_SCRIPT_CANDIDATES)}")
        return []
    completed = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, check=False, timeout=timeout_s
    )
    pattern = re.compile(
        r"Conformer-(\w+) \(([\d.]+)M\) compiled=(True|False) B=(\d+) T=(\d+): "
        r"([\d.]+) ms/step, (\d+) audio-s/s"
    )
    failed = re.compile(r"^(\w+) (True|False) failed (.*)$")
    rows = []
    for line in completed.stdout.splitlines():
        match, failure = pattern.search(line), failed.match(line.strip())
        if match:
            size, params, compiled, batch, frames, step_ms, audio = match.groups()
            rows.append(
                {
                    "model": f"Conformer-{size}",
                    "framework": f"torch {'compile' if compiled == 'True' else 'eager'} "
                    "(torch_conformer.py)",
                    "batch": int(batch),
                    "frames": int(frames),
                    "step_ms": float(step_ms),
                    "audio_s_per_s": float(audio),
                    "params_M": float(params),
                    "status": "measured",
                }
            )
        elif failure:
            size, compiled, reason = failure.groups()
            rows.append(
                {
                    "model": f"Conformer-{size}",
                    "framework": f"torch {'compile' if compiled == 'True' else 'eager'} "
                    "(torch_conformer.py)",
                    "status": f"failed: {reason}",
                }
            )
    if not rows:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"torch peer printed no results (exit {completed.returncode}): {tail}")
    return rows


def run_full(args: argparse.Namespace) -> int:
    """Conformer-M (and -S with --full-sizes) at B=64 x 400, bf16: the torch peer script first,
    then jaxdl's step, absolute and relative positions."""
    platform = probe_platform()
    sizes = [FULL_MODELS[s] for s in args.full_sizes]
    rows: list[dict[str, Any]] = []
    if platform != "gpu":
        for name, *_ in sizes:
            for positions in args.positions:
                rows.append(
                    {"model": name, "framework": f"jaxdl ({positions})", "status": "not measured"}
                )
            for kind in ("eager", "compile"):
                rows.append(
                    {
                        "model": name,
                        "framework": f"torch {kind} (torch_conformer.py)",
                        "status": "not measured",
                    }
                )
        print(f"--full: not measured (jax's backend is {platform}: no GPU in this session)")
    else:
        if not args.no_peer:
            peer_rows = run_torch_gpu_peer()
            wanted = {name for name, *_ in sizes}
            rows += [row for row in peer_rows if row["model"] in wanted]
            if rows:
                print(format_table(rows, FULL_COLUMNS), flush=True)
        import jax

        for name, d, layers, heads, ffn in sizes:
            workload = {
                "batch_size": FULL_BATCH,
                "frames": FULL_FRAMES,
                "d_model": d,
                "layers": layers,
                "heads": heads,
                "ffn_dim": ffn,
                "kernel": FULL_KERNEL,
            }
            for positions in args.positions:
                result, _ = measure_jaxdl(
                    workload,
                    positions,
                    args.warmup,
                    args.steps,
                    dtype="bfloat16",
                    head=FULL_HEAD,
                    learning_rate=FULL_LR,
                    conv_impl=args.conv_impl,
                    profile_dir=args.profile_dir,
                )
                rows.append(
                    {
                        "model": name,
                        "framework": f"jaxdl {positions} (jax {jax.__version__})",
                        "batch": FULL_BATCH,
                        "frames": FULL_FRAMES,
                        **result,
                        "params_M": result["params"] / 1e6,
                        "status": "measured",
                    }
                )
                print(format_table(rows[-1:], FULL_COLUMNS).splitlines()[-1], flush=True)
    print(format_table(rows, FULL_COLUMNS))
    report = {
        "mode": "full",
        "models": [
            dict(zip(("name", "d", "layers", "heads", "ffn"), m, strict=True)) for m in sizes
        ],
        "batch": FULL_BATCH,
        "frames": FULL_FRAMES,
        "kernel": FULL_KERNEL,
        "dtype": "bfloat16 compute, float32 params",
        "loss": f"mean(logsumexp(Linear(d, {FULL_HEAD})(encoder(x)), -1)), AdamW lr {FULL_LR}",
        "conv_impl": args.conv_impl,
        "results": rows,
    }
    print(f"wrote {write_report(NAME, report, args.out)}")
    return 0


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_worker:
        print(json.dumps(measure_torch(json.loads(args.torch_worker))))
        return 0
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    if args.full:
        return run_full(args)

    workload = workload_of(args)
    torch_params = torchaudio_param_count(args.d_model, args.layers, args.ffn_dim, args.kernel)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec = {**workload, "warmup": args.warmup, "steps": args.steps, "threads": threads}

    jaxdl_rows, remeasures = {}, {}
    for positions in args.positions:
        jaxdl_rows[positions], remeasures[positions] = measure_jaxdl(
            workload,
            positions,
            args.warmup,
            args.steps,
            conv_impl=args.conv_impl,
            profile_dir=args.profile_dir,
        )
    counts = ", ".join(f"jaxdl {p} {row['params']:,}" for p, row in jaxdl_rows.items())
    print(f"parameters: {counts}, torchaudio Conformer {torch_params:,}", flush=True)
    if "absolute" in jaxdl_rows and jaxdl_rows["absolute"]["params"] != torch_params:
        sys.exit(f"{NAME}: error: jaxdl (absolute) and torchaudio parameter counts differ")

    rows = list(jaxdl_rows.values())
    rounds = []
    for index in range(args.rounds):
        now = {
            positions: row if index == 0 else remeasures[positions]()
            for positions, row in jaxdl_rows.items()
        }
        peers = {}
        if not args.no_peer:
            peers["eager"] = run_torch_cpu_peer(spec, compiled=False)
            if args.peer_compile:
                peers["compile"] = run_torch_cpu_peer(spec, compiled=True)
        for peer in peers.values():
            if peer["params"] != torch_params:
                sys.exit(
                    f"{NAME}: error: torch has {peer['params']:,} parameters, "
                    f"the formula {torch_params:,}"
                )
        best = min((p["step_ms"] for p in peers.values()), default=None)
        abs_ms = now["absolute"]["step_ms"] if "absolute" in now else None
        rel_ms = now["relative"]["step_ms"] if "relative" in now else None
        rounds.append(
            {
                "round": index + 1,
                "load_1min": os.getloadavg()[0],
                "jaxdl_abs_ms": abs_ms,
                "jaxdl_rel_ms": rel_ms,
                "jaxdl_abs_cpu_ms": now["absolute"]["cpu_ms_per_step"] if abs_ms else None,
                "jaxdl_rel_cpu_ms": now["relative"]["cpu_ms_per_step"] if rel_ms else None,
                "torch_eager_ms": peers["eager"]["step_ms"] if "eager" in peers else None,
                "torch_eager_cpu_ms": (
                    peers["eager"]["cpu_ms_per_step"] if "eager" in peers else None
                ),
                "torch_compile_ms": peers["compile"]["step_ms"] if "compile" in peers else None,
                "ratio": best / abs_ms if best and abs_ms else None,
                "ratio_rel": best / rel_ms if best and rel_ms else None,
            }
        )
        print(format_table(rounds[-1:], ROUND_COLUMNS).splitlines()[-1], flush=True)
        if index == 0:
            rows += list(peers.values())

    print(format_table(rows, TABLE_COLUMNS))
    print(format_table(rounds, ROUND_COLUMNS))
    summary: dict[str, Any] = {"target_ratio": 1.0}
    loads = [r["load_1min"] for r in rounds]
    for key in ("ratio", "ratio_rel"):
        values = [r[key] for r in rounds if r[key] is not None]
        if values:
            summary[f"median_{key}"] = statistics.median(values)
    if "median_ratio" in summary:
        summary["target_met"] = summary["median_ratio"] >= summary["target_ratio"]
        rel = summary.get("median_ratio_rel")
        print(
            f"median over {len(rounds)} rounds of torch best step ms / jaxdl (absolute) step ms "
            f"= {summary['median_ratio']:.3f} (target >= 1: "
            f"{'met' if summary['target_met'] else 'not met'})"
            + (f"; relative positions: {rel:.3f}" if rel is not None else "")
            + f"; 1-min load average {min(loads):.2f}-{max(loads):.2f}"
        )
    report = {
        "mode": "cpu",
        "workload": workload,
        "loss": "mean(encoder(features, lengths) ** 2)",
        "optimizer": f"AdamW lr {LEARNING_RATE}, betas (0.9, 0.999), eps 1e-8, "
        f"weight decay {WEIGHT_DECAY} on every parameter",
        "schedule": {f: getattr(args, f) for f in CPU_SCHEDULE},
        "positions": list(args.positions),
        "conv_impl": args.conv_impl,
        "peer_compile": args.peer_compile,
        "torch_threads": threads,
        "xla_flags_arg": args.xla_flags,
        "params": {
            **{f"jaxdl_{p}": row["params"] for p, row in jaxdl_rows.items()},
            "torch": torch_params,
        },
        "results": rows,
        "rounds": rounds,
        "load_1min_range": [min(loads), max(loads)],
        **summary,
    }
    print(f"wrote {write_report(NAME, report, args.out)}")
    return 0


if __name__ == "__main__":
    run_program(main)
