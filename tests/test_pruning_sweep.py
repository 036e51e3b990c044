"""One-shot pruning of a trained state (jaxdl.optim.prune_checkpoint) and the
benchmarks/pruning_sweep.py smoke run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.optim.prune_checkpoint import one_shot_prune, prune_params
from jaxdl.optim.pruning import magnitude_masks, sparsity_report
from jaxdl.train.state import TrainState


def small_state() -> TrainState:
    """A state with two kernels, a bias, BatchNorm statistics and SGD momentum."""
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
        "dense": {"kernel": rng.normal(size=(8, 5)), "bias": rng.normal(size=(5,))},
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    stats = {"norm": {"mean": jnp.ones(4), "var": jnp.full(4, 2.0)}}
    return TrainState.create(
        apply_fn=None, params=params, tx=optax.sgd(0.1, momentum=0.9), batch_stats=stats
    )


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_params_zeroes_exactly_the_masked_kernel_entries(scope):
    params = small_state().params
    pruned = prune_params(params, 0.75, scope)
    masks = magnitude_masks(params, 0.75, scope)
    for p, q, m in zip(*(jax.tree.leaves(t) for t in (params, pruned, masks)), strict=True):
        np.testing.assert_array_equal(q, np.where(m, p, 0.0))
    np.testing.assert_array_equal(pruned["dense"]["bias"], params["dense"]["bias"])
    report = sparsity_report(pruned)
    assert report["overall"] == pytest.approx(0.75, abs=1 / 112)  # 72 + 40 kernel entries
    if scope == "layer":
        assert all(s == pytest.approx(0.75, abs=0.02) for s in report["per_kernel"].values())


def test_one_shot_prune_changes_the_params_only():
    state = small_state()
    pruned = one_shot_prune(state, 0.5, "global")
    assert sparsity_report(pruned.params)["overall"] == 0.5
    assert sparsity_report(state.params)["overall"] == 0.0  # the input state is untouched
    for kept in ("batch_stats", "opt_state", "step"):
        jax.tree.map(np.testing.assert_array_equal, getattr(pruned, kept), getattr(state, kept))


@pytest.mark.slow
def test_pruning_sweep_quick_run_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    command = [
        sys.executable,
        "benchmarks/pruning_sweep.py",
        "--quick",
        "--config=experiments/digits_resnet.py:depth=8",
        "--config.model.width=8",
        "--gradual-scopes",
        "global",
        f"--out={out}",
        f"--plot={png}",
    ]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device: conftest's 8 fake ones only slow it
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(out.read_text())
    methods = {(r["method"], r["target_sparsity"]): r for r in report["rows"]}
    pruned = ("one-shot layer", "one-shot global", "gradual global")
    assert set(methods) == {("dense", 0.0), *((m, s) for m in pruned for s in (0, 0.9))}
    # The restored checkpoint unpruned scores what fit() reported for it.
    dense = methods["dense", 0.0]["test_accuracy"]
    assert methods["one-shot layer", 0.0]["test_accuracy"] == dense
    for method in pruned:
        assert methods[method, 0.9]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert png.read_bytes().startswith(b"\x89PNG")
