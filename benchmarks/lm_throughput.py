"""Language-model train step through ``jaxdl train``, next to PyTorch eager and torch.compile.

The CPU workload is the GPT case of ../shared/peers/cpu_peers.py: d=256, 4 layers, 4 heads, MLP
4d, T=256, B=8, vocab 8192, f32, AdamW lr 3e-4 (5,322,240 parameters on both sides, checked).
Each of ``--rounds`` interleaved rounds times:

- **bare step**: jaxdl's jitted step alone (``create_sharded_train_state`` + ``make_train_step`` +
  ``ShardedStep`` with a ``LanguageModeling`` task, one device-resident batch, each step blocking
  on its results), as packed rows (segment ids + positions, what the trainer's packed text gives
  the model) and as plain rows (the peer's shape: causal attention only);
- **jaxdl train**: ``jaxdl train`` in a subprocess, on ``experiments/lm_text.py`` set like the
  peer (a generated config file wraps it) over a generated corpus of ``vocab - 3`` distinct CJK
  characters read by the character tokenizer, so the vocabulary really is 8192. Steady state
  (``step_ms``): the median over the logging windows after the first of the wall time between
  consecutive train records of ``metrics.jsonl`` (each written right after a device sync) per
  step. The trainer's own ``tokens_per_sec`` is reported beside it (``logged_step_ms``; the two
  agree since TrainLogger syncs on a window's first step);
- **torch** eager (and ``torch.compile`` with ``--peer-compile``) in a fresh process each, with
  ``OMP_WAIT_POLICY=PASSIVE``, ``torch.set_flush_denormal(True)`` and one thread per core jax
  uses. The model is the peer's ``GPTModel`` written out here (no import from ../shared).

The headline is the median over rounds of ``torch best step ms / jaxdl train step ms`` (the
issue's target: >= 1.2).

    python benchmarks/lm_throughput.py                    # CPU: 3 rounds, torch eager
    python benchmarks/lm_throughput.py --peer-compile     # ... plus torch.compile each round
    python benchmarks/lm_throughput.py --quick            # smoke test: 2 rounds, a few steps
    python benchmarks/lm_throughput.py --config.model.scan_layers=false   # jaxdl side only
    python benchmarks/lm_throughput.py --full             # GPU: GPT-2 124M and ~350M, bf16

``--full`` (GPU) times the bare step for GPT-2 small (d=768, 12 layers, B=32) and ~350M (d=1024,
24 layers, B=16) at T=1024, vocab 50304, bf16 compute with f32 parameters, and runs
``shared/peers/torch_peers.py gpt`` (or ../shared/peers/) when present. MFU counts
``6 N + 12 L d T`` FLOPs per token (N: parameters less the position table; the attention term
of PaLM appendix B / nanoGPT, which counts the full T x T score matrix) against
``--peak-tflops`` (default 989: H100/H200 SXM dense bf16), as torch_peers.py does. Without a GPU
it prints "not measured".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    children_cpu_seconds,
    format_table,
    run_program,
    run_torch_worker,
    time_steps,
    write_report,
)
from op_profile import profile_steps

NAME = "lm_throughput"
LM_TEXT_CONFIG = os.path.join(REPO_ROOT, "experiments", "lm_text.py")
# The peers' CPU GPT case (cpu_peers.py GPT=dict(B=8, T=256, d=256, L=4, h=4, V=8192)).
CPU_WORKLOAD = {
    "vocab": 8192,
    "seq_len": 256,
    "embed_dim": 256,
    "layers": 4,
    "heads": 4,
    "batch_size": 8,
    "dtype": "float32",
}
# The GPU targets (torch_peers.py gpt): name, d, layers, heads, batch; T=1024, vocab 50304, bf16.
FULL_MODELS = (
    ("gpt2-small (124M)", 768, 12, 12, 32),
    ("gpt2-medium (~350M)", 1024, 24, 16, 16),
)
FULL_SIZES = {"124m": FULL_MODELS[0], "350m": FULL_MODELS[1]}
FULL_VOCAB, FULL_SEQ_LEN = 50304, 1024
# rounds, untimed warm-up steps, timed steps (bare and torch), trainer log window, timed windows
CPU_SCHEDULE = {"rounds": 3, "warmup": 3, "steps": 10, "log_every": 10, "windows": 3}
QUICK_SCHEDULE = {"rounds": 2, "warmup": 1, "steps": 2, "log_every": 2, "windows": 2}
FULL_SCHEDULE = {"rounds": 1, "warmup": 5, "steps": 20, "log_every": 10, "windows": 3}
# torch.optim.AdamW defaults (the peer passes lr only): betas (0.9, 0.999), eps 1e-8, weight
# decay 0.01 on every parameter.
LEARNING_RATE, WEIGHT_DECAY = 3e-4, 0.01
CJK_FIRST = 0x4E00  # CJK Unified Ideographs: 20,992 code points that NFKC leaves alone
CJK_COUNT = 20992
PEER_SCRIPT_CANDIDATES = (
    os.path.join(REPO_ROOT, "shared", "peers", "torch_peers.py"),
    os.path.join(REPO_ROOT, "..", "shared", "peers", "torch_peers.py"),
)
TABLE_COLUMNS = (
    "path",
    "step_ms",
    "logged_step_ms",
    "cpu_ms_per_step",
    "tokens_per_s",
    "gflop_per_s",
    "first_step_s",
    "params",
)
ROUND_COLUMNS = (
    "round",
    "load_1min",
    "bare_packed_ms",
    "bare_plain_ms",
    "train_ms",
    "train_logged_ms",
    "torch_eager_ms",
    "torch_compile_ms",
    "ratio",
    "ratio_bare",
)
FULL_COLUMNS = ("model", "framework", "batch", "step_ms", "tokens_per_s", "mfu_pct", "status")


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Benchmark flags plus ``--config.a.b=value`` overrides for the jaxdl side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 rounds, few steps")
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--embed-dim", type=int, default=None, help="MLP width is 4x this")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--gelu",
        choices=("exact", "tanh"),
        default="exact",
        help="both sides: exact = erf (the peer's F.gelu), tanh = GPT-2's approximation",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (bare, torch)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (bare, torch)")
    parser.add_argument("--log-every", type=int, default=None, help="trainer logging window")
    parser.add_argument(
        "--windows", type=int, default=None, help="timed trainer windows (after the first)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip PyTorch")
    parser.add_argument("--peer-compile", action="store_true", help="also torch.compile")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="--full: peak for MFU (dense bf16)"
    )
    parser.add_argument(
        "--full-sizes",
        default="124m,350m",
        help="--full: models to time (124m, 350m; comma-separated)",
    )
    parser.add_argument(
        "--full-batch", type=int, default=None, help="--full: batch size of every model (32 / 16)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the trainer's output")
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    bad = [arg for arg in overrides if not arg.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized argument {bad[0]!r} (config overrides look like --config.x=y)")
    if args.full and args.quick:
        parser.error("--quick and --full exclude each other")
    schedule = FULL_SCHEDULE if args.full else QUICK_SCHEDULE if args.quick else CPU_SCHEDULE
    for field, default in {**CPU_WORKLOAD, **schedule}.items():
        if getattr(args, field, None) is None:
            setattr(args, field, default)
    for field in ("vocab", "seq_len", "embed_dim", "layers", "heads", "batch_size", "rounds"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    for field in ("warmup", "steps", "log_every", "windows"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    if args.embed_dim % args.heads:
        parser.error("--embed-dim must be a multiple of --heads")
    sizes = [size.strip().lower() for size in args.full_sizes.split(",") if size.strip()]
    if not sizes or set(sizes) - set(FULL_SIZES):
        parser.error(f"--full-sizes must name some of {tuple(FULL_SIZES)}")
    args.full_models = tuple(FULL_SIZES[size] for size in sizes)
    if args.full_batch is not None and args.full_batch < 1:
        parser.error("--full-batch must be >= 1")
    if not args.full and not 4 <= args.vocab <= CJK_COUNT + 3:
        parser.error(f"--vocab must be in [4, {CJK_COUNT + 3}] (the corpus is CJK characters)")
    return args, overrides


def workload_of(args: argparse.Namespace) -> dict[str, Any]:
    """The CPU workload fields of ``args`` (recorded in the report, sent to the torch worker)."""
    workload = {field: getattr(args, field) for field in CPU_WORKLOAD}
    workload |= {"mlp_dim": 4 * args.embed_dim, "gelu": args.gelu}
    return workload


# ------------------------------------------------------------------------------------------------
# Model size and FLOPs (the same formulas on both sides)


def gpt_param_count(vocab: int, seq_len: int, d: int, layers: int, mlp: int) -> int:
    """Parameters of the peer's GPT (tied head): token and position tables, per layer two
    LayerNorms, qkv, proj, fc and out with biases, and the final LayerNorm."""
    per_layer = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return vocab * d + seq_len * d + layers * per_layer + 2 * d


def flops_per_token(params_no_pos: int, layers: int, d: int, seq_len: int) -> int:
    """Train FLOPs per token: 6 N (forward + backward of every weight) + 12 L d T (attention
    scores and values, full T x T as PaLM and nanoGPT count it). N excludes the position table."""
    return 6 * params_no_pos + 12 * layers * d * seq_len


# ------------------------------------------------------------------------------------------------
# The jaxdl config (experiments/lm_text.py set like the peer) and its corpus


def write_corpus(directory: str, vocab: int, line_chars: int = 1024, seed: int = 0) -> str:
    """Writes ``corpus.txt``: lines of ``line_chars`` CJK characters, every one of ``vocab - 3``
    characters (the char tokenizer adds pad, unk and cls) appearing at least 12 times, so the
    training split's vocabulary is complete. Returns the file's path."""
    from jaxdl.data.text import SPECIAL_TOKENS

    count = vocab - len(SPECIAL_TOKENS)
    chars = np.array([chr(CJK_FIRST + i) for i in range(count)])
    copies = max(12, math.ceil(40 * line_chars / count))  # >= 40 lines to split 90/5/5
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.permutation(count) for _ in range(copies)])
    path = os.path.join(directory, "corpus.txt")
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, len(stream), line_chars):
            handle.write("".join(chars[stream[start : start + line_chars]]) + "\n")
    return path


def config_assignments(
    workload: dict[str, Any], steps: int, log_every: int
) -> list[tuple[str, Any]]:
    """What the generated config changes in experiments/lm_text.py: the peer's model, AdamW as
    torch's defaults (no clipping, constant rate, decay on every parameter), no dropout, no
    evaluation or checkpoint before the last step, logging every ``log_every`` steps."""
    d = workload["embed_dim"]
    return [
        ("data.split_fractions", (0.9, 0.05, 0.05)),
        ("model.vocab_size", workload["vocab"]),
        ("model.num_layers", workload["layers"]),
        ("model.num_heads", workload["heads"]),
        ("model.embed_dim", d),
        ("model.mlp_dim", workload["mlp_dim"]),
        ("model.max_len", workload["seq_len"]),
        ("model.dropout_rate", 0.0),
        ("model.dtype", workload["dtype"]),
        ("model.mlp_activation", "gelu_exact" if workload["gelu"] == "exact" else "gelu"),
        ("model.tie_embeddings", True),
        ("optimizer.learning_rate", LEARNING_RATE),
        ("optimizer.b1", 0.9),
        ("optimizer.b2", 0.999),
        ("optimizer.eps", 1e-8),
        ("optimizer.weight_decay", WEIGHT_DECAY),
        ("optimizer.decay_bias_and_norm", True),
        ("optimizer.clip_global_norm", None),
        ("schedule.name", "constant"),
        ("schedule.warmup_steps", 0),
        ("train.batch_size", workload["batch_size"]),
        ("train.eval_batch_size", workload["batch_size"]),
        ("train.eval_every_steps", steps),
        ("checkpoint.every_steps", None),
        ("logging.every_steps", log_every),
    ]


def write_config(
    directory: str, corpus: str, workload: dict[str, Any], steps: int, log_every: int
) -> str:
    """A config file wrapping ``experiments/lm_text.py`` (what ``jaxdl train`` reads)."""
    base = f"{LM_TEXT_CONFIG}:paths={corpus},tokenizer=char,seq_len={workload['seq_len']}"
    base += f",steps={steps},workers=0"
    lines = [
        '"""Written by benchmarks/lm_throughput.py: experiments/lm_text.py set like the peer."""',
        "",
        "from jaxdl.config import load_config",
        "",
        "",
        "def get_config(arg=None):",
        f"    config = load_config({base!r})",
        "    config.unlock()",
        *(
            f"    config.{key} = {value!r}"
            for key, value in config_assignments(workload, steps, log_every)
        ),
        "    config.lock()",
        "    return config",
    ]
    path = os.path.join(directory, "lm_bench_config.py")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------------
# Timing helpers


def measure_steps(
    run_step: Callable[[], None], warmup: int, steps: int, tokens_per_step: int
) -> dict[str, Any]:
    """``common.time_steps`` with ``step_ms`` the median and tokens/s from it."""
    timed = time_steps(run_step, warmup, steps)
    median = timed.pop("step_ms_median")
    return {**timed, "step_ms": median, "tokens_per_s": tokens_per_step / (median / 1e3)}


# ------------------------------------------------------------------------------------------------
# jaxdl: the bare jitted step


def measure_bare(
    config: Any, packed: bool, warmup: int, steps: int, profile_dir: str | None = None
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """Compiles and times the library's train step alone on one synthetic batch, built from the
    same ``config.model`` / ``optimizer`` / ``schedule`` / ``mesh`` the trainer reads.

    The step compiles on its first call (``first_step_s``), not ahead of time: with jax 0.10.2
    ``ShardedStep.lower(...).compile()`` lowers ``lr_scale`` as a sharded ShapeDtypeStruct, whose
    cache entry ``ShardedStep.__call__`` (a NumPy scalar) misses, so it would compile twice.
    Returns the first measurement and a function that times the steps again (later rounds).
    With ``profile_dir``, a few more steps are traced there and their op table printed.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdl.experiment import model_kwargs
    from jaxdl.models import get_model
    from jaxdl.optim import build_optimizer, build_schedule
    from jaxdl.parallel import batch_sharding, mesh_from_config
    from jaxdl.parallel.rules import rules_with_overrides
    from jaxdl.tasks import LanguageModeling
    from jaxdl.train import ShardedStep, count_params, create_sharded_train_state, make_train_step

    batch, seq_len = int(config.train.batch_size), int(config.model.max_len)
    vocab = int(config.model.vocab_size)
    mesh = mesh_from_config(config.mesh)
    rules = rules_with_overrides(config.mesh.get("rules"))
    model = get_model(config.model.name, **model_kwargs(config.model, {}))
    schedule = build_schedule(
        config.schedule,
        base_learning_rate=float(config.optimizer.learning_rate),
        steps_per_epoch=1,
        total_steps=max(2, warmup + steps),
    )
    tx = build_optimizer(config.optimizer, schedule)
    task = LanguageModeling(seq_len, packed=packed)
    start = time.perf_counter()
    state, shardings = create_sharded_train_state(
        model,
        tx,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((batch, seq_len), jnp.int32),
        mesh,
        rules,
    )
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    row = (batch, seq_len + 1)
    host = {
        "tokens": rng.integers(0, vocab, row, dtype=np.int32),
        "loss_mask": np.ones(row, np.float32),
    }
    if packed:  # one sequence per row, as segment ids and positions (the packed model inputs)
        host["segment_ids"] = np.ones(row, np.int32)
        host["positions"] = np.broadcast_to(np.arange(row[1], dtype=np.int32), row).copy()
    data_sharding = batch_sharding(mesh, rules)
    device_batch = jax.device_put(host, data_sharding)
    step = ShardedStep(
        make_train_step(task), mesh, shardings, data_sharding, returns_state=True, rules=rules
    )

    def run_step() -> None:
        nonlocal state
        state, metrics = step(state, device_batch)
        jax.block_until_ready((state, metrics))

    def remeasure() -> dict[str, Any]:
        return measure_steps(run_step, warmup, steps, batch * seq_len)

    params = count_params(state.params)
    position_table = sum(
        int(np.size(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(state.params))
        if "pos_embed" in jax.tree_util.keystr(path)
    )
    first = {
        "path": f"jaxdl bare step ({'packed' if packed else 'plain'} rows)",
        "params": params,
        "params_no_pos": params - position_table,
        "init_s": init_seconds,
        **remeasure(),  # first_step_s: tracing + compilation + the first step
    }
    if profile_dir:
        label = f"lm_{model.__class__.__name__}_d{config.model.embed_dim}_b{batch}"
        profile_steps(run_step, profile_dir, f"{label}_{'packed' if packed else 'plain'}")
    return first, remeasure


# ------------------------------------------------------------------------------------------------
# jaxdl: through `jaxdl train`


def jaxdl_command() -> list[str]:
    """The ``jaxdl`` console script of this interpreter's environment, else ``python -m jaxdl``."""
    script = os.path.join(os.path.dirname(sys.executable), "jaxdl")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "jaxdl"]


def run_trainer(
    config_path: str,
    overrides: Sequence[str],
    workdir: str,
    tokens_per_step: int,
    log_every: int,
    verbose: bool,
) -> dict[str, Any]:
    """Runs ``jaxdl train`` to completion and reads its train logging windows back.

    ``step_ms`` (the headline): median, over the windows after the first, of the wall time
    between the arrivals of consecutive train records in ``metrics.jsonl`` (polled every 5 ms)
    divided by the window's steps. Each record is written right after the window's metrics are
    fetched (a device sync), so the interval holds exactly the window's steps plus the loop's
    own work (input, dispatch, logging).
    ``logged_step_ms``: the same windows' logged ``tokens_per_sec`` as ms per step (the logger
    waits for a window's first step, then times the others).
    """
    command = [*jaxdl_command(), "train", "--config", config_path, "--workdir", workdir]
    command += list(overrides)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    log_path = workdir.rstrip("/") + ".log"
    arrivals: list[tuple[float, dict[str, Any]]] = []
    buffer, offset = "", 0
    cpu_before, start = children_cpu_seconds(), time.perf_counter()

    def poll() -> None:
        nonlocal buffer, offset
        if not os.path.exists(metrics_path):
            return
        with open(metrics_path) as handle:
            handle.seek(offset)
            chunk = handle.read()
            offset = handle.tell()
        now = time.perf_counter()
        buffer += chunk
        *complete, buffer = buffer.split("\n")
        arrivals.extend((now, json.loads(line)) for line in complete if line.strip())

    with open(log_path, "w") as log:
        out = None if verbose else log
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None)
        while process.poll() is None:
            poll()
            time.sleep(0.005)
        poll()
    run_seconds = time.perf_counter() - start
    if process.returncode != 0:
        with open(log_path) as handle:
            tail = (handle.read().strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"jaxdl train failed (exit {process.returncode}): {tail}")
    train = [(t, r) for t, r in arrivals if r.get("split") == "train"]
    rates = [r["tokens_per_sec"] for _, r in train[1:] if r.get("tokens_per_sec")]
    walls = [
        (t - t_prev) / (r["step"] - r_prev["step"]) * 1e3
        for (t_prev, r_prev), (t, r) in zip(train[:-1], train[1:], strict=True)
        if r["step"] - r_prev["step"] == log_every
    ]
    rate = statistics.median(rates) if rates else None
    wall = statistics.median(walls) if walls else None
    from jaxdl.data.tokenizer_store import load_tokenizer

    return {
        "path": "jaxdl train (experiments/lm_text.py, packed rows)",
        "step_ms": wall,
        "tokens_per_s": tokens_per_step / wall * 1e3 if wall else None,
        "logged_step_ms": tokens_per_step / rate * 1e3 if rate else None,
        "logged_tokens_per_s": rate,
        "window_wall_step_ms": walls,
        "window_logged_step_ms": [tokens_per_step / r * 1e3 for r in rates],
        "first_window_logged_step_ms": (
            tokens_per_step / train[0][1]["tokens_per_sec"] * 1e3
            if train and train[0][1].get("tokens_per_sec")
            else None
        ),
        "steps": train[-1][1]["step"] if train else 0,
        "run_s": run_seconds,
        "run_cpu_s": children_cpu_seconds() - cpu_before,
        "tokenizer_vocab": load_tokenizer(workdir).vocab_size,
    }


# ------------------------------------------------------------------------------------------------
# PyTorch (CPU): runs in its own process via --torch-worker


def torch_gpt(vocab: int, seq_len: int, d: int, layers: int, heads: int, mlp: int, gelu: str):
    """The peer's ``GPTModel`` (cpu_peers.py), layer for layer: token + position tables
    (``nn.Embedding``), pre-LN blocks with one fused qkv ``Linear`` (bias), causal SDPA, ``proj``,
    a GELU MLP (``fc`` d -> ``mlp``, ``out`` back), a final LayerNorm and logits against the
    token table (tied, no bias). ``gelu='tanh'`` swaps F.gelu's erf for its tanh form."""
    import torch.nn.functional as F
    from torch import nn

    approximate = "tanh" if gelu == "tanh" else "none"

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, mlp), nn.Linear(mlp, d)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = [t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v)]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate=approximate))

    class GPTModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.ln = nn.LayerNorm(d)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.ln(x) @ self.wte.weight.T

    return GPTModel()


def measure_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """Times the peer's train step (AdamW lr 3e-4, torch defaults otherwise) on one batch of
    next-token targets (the peer scores ``idx`` against itself: same shapes, same FLOPs)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    # XLA flushes denormals on CPU; without this torch's GEMMs slow down ~10x (the peers' note).
    torch.set_flush_denormal(True)
    torch.set_num_threads(spec["threads"])
    B, T = spec["batch_size"], spec["seq_len"]
    model = torch_gpt(
        spec["vocab"],
        T,
        spec["embed_dim"],
        spec["layers"],
        spec["heads"],
        spec["mlp_dim"],
        spec["gelu"],
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    forward = torch.compile(model) if spec["compiled"] else model
    tokens = torch.randint(0, spec["vocab"], (B, T + 1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def run_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()

    result = measure_steps(run_step, spec["warmup"], spec["steps"], B * T)
    return {
        "path": f"torch {torch.__version__} {'compile' if spec['compiled'] else 'eager'}",
        "params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        **result,
    }


def run_torch_cpu_peer(spec: dict[str, Any], compiled: bool) -> dict[str, Any]:
    """Runs ``measure_torch`` in a fresh process (``common.run_torch_worker``)."""
    return run_torch_worker(__file__, {**spec, "compiled": compiled})


# ------------------------------------------------------------------------------------------------
# GPU (--full)


def run_torch_gpu_peer(timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Runs ``torch_peers.py gpt`` (torch.compile, bf16 autocast, fused AdamW) and parses it."""
    script = next((path for path in PEER_SCRIPT_CANDIDATES if os.path.isfile(path)), None)
    if script is None:
        print(f"torch peer skipped: torch_peers.py not found in {list(PEER_SCRIPT_CANDIDATES)}")
        return []
    completed = subprocess.run(
        [sys.executable, script, "gpt"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    pattern = re.compile(
        r"d=(\d+) L=(\d+) params=(\d+)M B=(\d+) T=(\d+): (\d+) tok/s\s+MFU\(989\)=([\d.]+)%"
    )
    names = {d: name for name, d, *_ in FULL_MODELS}
    rows = []
    for line in completed.stdout.splitlines():
        match = pattern.search(line)
        if match:
            d, _, params, batch, seq_len, tokens, mfu = match.groups()
            rows.append(
                {
                    "model": names.get(int(d), f"d={d}"),
                    "framework": "torch.compile (torch_peers.py)",
                    "batch": int(batch),
                    "step_ms": int(batch) * int(seq_len) / float(tokens) * 1e3,
                    "tokens_per_s": float(tokens),
                    "mfu_pct": float(mfu),
                    "params_no_pos_M": int(params),
                    "status": "measured",
                }
            )
    if not rows:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"torch peer printed no gpt results (exit {completed.returncode}): {tail}")
    return rows


def backend_platform() -> str:
    """jax's default device platform ('cpu', 'gpu', 'tpu')."""
    import jax

    return jax.devices()[0].platform


def run_full(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """GPT-2 small and ~350M at T=1024, bf16: jaxdl's bare step, then the torch peer script."""
    import jax

    platform = backend_platform()
    rows: list[dict[str, Any]] = []
    formula = "6*N + 12*L*d*T FLOPs per token (N: params less the position table)"
    if platform != "gpu":
        for name, *_ in args.full_models:
            for framework in ("jaxdl bare step", "torch.compile (torch_peers.py)"):
                rows.append({"model": name, "framework": framework, "status": "not measured"})
        print(f"--full: not measured (jax's backend is {platform}: no GPU in this session)")
    else:
        with tempfile.TemporaryDirectory(prefix="jaxdl_lm_bench_") as tmp:
            for name, d, layers, heads, batch in args.full_models:
                batch = args.full_batch or batch
                workload = {
                    "vocab": FULL_VOCAB,
                    "seq_len": FULL_SEQ_LEN,
                    "embed_dim": d,
                    "layers": layers,
                    "heads": heads,
                    "batch_size": batch,
                    "dtype": "bfloat16",
                    "mlp_dim": 4 * d,
                    "gelu": args.gelu,
                }
                config, _ = load_bench_config(tmp, "unused", workload, 1, 1, overrides)
                result, _ = measure_bare(config, False, args.warmup, args.steps, args.profile_dir)
                flops = flops_per_token(result["params_no_pos"], layers, d, FULL_SEQ_LEN)
                mfu = result["tokens_per_s"] * flops / (args.peak_tflops * 1e12) * 100
                rows.append(
                    {
                        "model": name,
                        "framework": f"jaxdl bare step (jax {jax.__version__})",
                        "batch": batch,
                        **result,
                        "mfu_pct": mfu,
                        "status": "measured",
                    }
                )
                print(format_table(rows[-1:], FULL_COLUMNS).splitlines()[-1], flush=True)
        if not args.no_peer:
            rows += run_torch_gpu_peer()
    print(format_table(rows, FULL_COLUMNS))
    print(f"MFU: tokens/s x ({formula}) / {args.peak_tflops:g} TFLOP/s")
    report = {
        "mode": "full",
        "models": [
            dict(zip(("name", "d", "layers", "heads", "batch"), m, strict=True))
            for m in args.full_models
        ],
        "full_batch": args.full_batch,
        "vocab": FULL_VOCAB,
        "seq_len": FULL_SEQ_LEN,
        "dtype": "bfloat16 compute, float32 params",
        "flops_per_token": formula,
        "peak_tflops": args.peak_tflops,
        "overrides": list(overrides),
        "results": rows,
    }
    print(f"wrote {write_report(NAME, report, args.out)}")
    return 0


# ------------------------------------------------------------------------------------------------


def load_bench_config(
    directory: str,
    corpus: str,
    workload: dict[str, Any],
    steps: int,
    log_every: int,
    overrides: Sequence[str],
) -> tuple[Any, str]:
    """Writes the trainer's config file into ``directory`` and loads it with ``overrides``;
    returns the config and the file's path (what ``jaxdl train`` reads)."""
    from jaxdl.config import load_config
    from jaxdl.errors import UserError

    path = write_config(directory, corpus, workload, steps, log_every)
    try:
        config = load_config(path, overrides)
    except UserError as error:
        raise SystemExit(f"{NAME}: error: {error}") from None
    return config, path


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.torch_worker:
        print(json.dumps(measure_torch(json.loads(args.torch_worker))))
        return 0
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    if args.full:
        return run_full(args, overrides)

    workload = workload_of(args)
    batch, seq_len, d, layers = args.batch_size, args.seq_len, args.embed_dim, args.layers
    tokens_per_step = batch * seq_len
    train_steps = args.log_every * (args.windows + 1)
    torch_params = gpt_param_count(args.vocab, seq_len, d, layers, workload["mlp_dim"])
    flops = flops_per_token(torch_params - seq_len * d, layers, d, seq_len)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec = {**workload, "warmup": args.warmup, "steps": args.steps, "threads": threads}

    with tempfile.TemporaryDirectory(prefix="jaxdl_lm_bench_") as tmp:
        corpus = write_corpus(tmp, args.vocab)
        config, config_path = load_bench_config(
            tmp, corpus, workload, train_steps, args.log_every, overrides
        )
        with open(config_path) as handle:
            config_source = handle.read()

        bare_packed, remeasure_packed = measure_bare(
            config, True, args.warmup, args.steps, args.profile_dir
        )
        bare_plain, remeasure_plain = measure_bare(
            config, False, args.warmup, args.steps, args.profile_dir
        )
        jax_params = bare_packed["params"]
        print(f"parameters: jaxdl {jax_params:,}, torch (peer GPT) {torch_params:,}", flush=True)
        if abs(jax_params - torch_params) > 0.01 * torch_params:
            sys.exit(f"{NAME}: error: parameter counts differ by more than 1%")

        rows = [bare_packed, bare_plain]
        rounds = []
        for index in range(args.rounds):
            if index:
                bare_packed_now, bare_plain_now = remeasure_packed(), remeasure_plain()
            else:
                bare_packed_now, bare_plain_now = bare_packed, bare_plain
            trainer = run_trainer(
                config_path,
                overrides,
                os.path.join(tmp, f"run_{index}"),
                tokens_per_step,
                args.log_every,
                args.verbose,
            )
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
            rounds.append(
                {
                    "round": index + 1,
                    "load_1min": os.getloadavg()[0],
                    "bare_packed_ms": bare_packed_now["step_ms"],
                    "bare_plain_ms": bare_plain_now["step_ms"],
                    "bare_packed_cpu_ms": bare_packed_now["cpu_ms_per_step"],
                    "train_ms": trainer["step_ms"],
                    "train_logged_ms": trainer["logged_step_ms"],
                    "torch_eager_ms": peers["eager"]["step_ms"] if "eager" in peers else None,
                    "torch_eager_cpu_ms": (
                        peers["eager"]["cpu_ms_per_step"] if "eager" in peers else None
                    ),
                    "torch_compile_ms": peers["compile"]["step_ms"] if "compile" in peers else None,
                    "ratio": best / trainer["step_ms"] if best and trainer["step_ms"] else None,
                    "ratio_bare": best / bare_packed_now["step_ms"] if best else None,
                }
            )
            print(format_table(rounds[-1:], ROUND_COLUMNS).splitlines()[-1], flush=True)
            if index == 0:
                trainer["params"] = jax_params
                rows.insert(0, trainer)
                rows += list(peers.values())
        if rows[0]["tokenizer_vocab"] != args.vocab:
            print(
                f"warning: the char tokenizer found {rows[0]['tokenizer_vocab']} symbols, "
                f"not {args.vocab} (the model's vocabulary is {args.vocab} either way)"
            )

    for row in rows:
        if row.get("tokens_per_s"):
            row["gflop_per_s"] = row["tokens_per_s"] * flops / 1e9
    print(format_table(rows, TABLE_COLUMNS))
    print(format_table(rounds, ROUND_COLUMNS))
    summary: dict[str, Any] = {"target_ratio": 1.2}
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    loads = [r["load_1min"] for r in rounds]
    if ratios:
        summary["median_ratio"] = statistics.median(ratios)
        summary["median_ratio_bare"] = statistics.median(r["ratio_bare"] for r in rounds)
        summary["target_met"] = summary["median_ratio"] >= summary["target_ratio"]
        print(
            f"median over {len(ratios)} rounds of torch best step ms / jaxdl train step ms = "
            f"{summary['median_ratio']:.3f} (target >= 1.2: "
            f"{'met' if summary['target_met'] else 'not met'}); "
            f"bare packed step: {summary['median_ratio_bare']:.3f}; 1-min load average "
            f"{min(loads):.2f}-{max(loads):.2f}"
        )
    print(
        f"GFLOP/s: tokens/s x {flops / 1e6:.2f} MFLOP/token "
        f"(6N + 12LdT, N={torch_params - seq_len * d:,})"
    )
    report = {
        "mode": "cpu",
        "workload": workload,
        "schedule": {f: getattr(args, f) for f in CPU_SCHEDULE} | {"train_steps": train_steps},
        "peer_compile": args.peer_compile,
        "torch_threads": threads,
        "xla_flags_arg": args.xla_flags,
        "overrides": overrides,
        "trainer_config": config_source,
        "params": {"jaxdl": jax_params, "torch": torch_params},
        "flops_per_token": flops,
        "results": rows,
        "rounds": rounds,
        "load_1min_range": [min(loads), max(loads)],
        **summary,
    }
    print(f"wrote {write_report(NAME, report, args.out)}")
    return 0


if __name__ == "__main__":
    run_program(main)
