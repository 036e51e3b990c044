"""benchmarks/op_profile.py: per-op times read back from a jax.profiler trace."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

SPEC = importlib.util.spec_from_file_location(
    "op_profile", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "op_profile.py")
)
op_profile = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(op_profile)


def test_op_kind_drops_only_the_instance_number():
    assert op_profile.op_kind("loop_add_fusion.24") == "loop_add_fusion"
    assert op_profile.op_kind("custom-call") == "custom-call"
    assert op_profile.op_kind("fusion.1.remat") == "fusion.1.remat"


def test_profile_steps_sums_the_traced_ops_per_step(tmp_path):
    step = jax.jit(lambda a: jnp.tanh(a @ a).sum(axis=0) + jnp.cos(a).sum())
    a = jnp.ones((256, 256))
    step(a).block_until_ready()
    rows = op_profile.profile_steps(lambda: step(a).block_until_ready(), str(tmp_path), "probe")
    total, ops = rows[0], rows[1:]
    assert total["op"] == "(all ops)" and total["ms_per_step"] > 0
    assert ops and all(row["ms_per_step"] > 0 for row in ops)
    assert sum(row["ms_per_step"] for row in ops) == pytest.approx(total["ms_per_step"])
    assert sum(row["share_pct"] for row in ops) == pytest.approx(100.0)
    assert (tmp_path / "probe_ops.json").exists()
    kinds = op_profile.op_table(str(tmp_path / "probe"), op_profile.PROFILED_STEPS, by_kind=True)
    assert kinds[0]["ms_per_step"] == pytest.approx(total["ms_per_step"])


def test_a_directory_without_a_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*xplane.pb"):
        op_profile.op_table(str(tmp_path), 1)
