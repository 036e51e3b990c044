"""AOT compilation of the train step for topologies one does not have: memory, FLOPs, CLI."""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxdl.cli import main
from jaxdl.models import get_model
from jaxdl.parallel import aot, make_mesh
from jaxdl.train.compile import compile_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jaxdl[tpu]')"
)


def test_cpu_topology_is_the_first_n_cpu_devices():
    assert aot.topology_devices("cpu:4") == jax.devices("cpu")[:4]


@pytest.mark.parametrize(
    ("topology", "message"),
    [("v5p", "not of the form"), ("cpu:x", "positive int"), ("cpu:64", "needs 64 CPU devices")],
)
def test_malformed_or_unavailable_topologies_are_one_line_value_errors(topology, message):
    with pytest.raises(ValueError, match=message):
        aot.topology_devices(topology)


def _hide_libtpu(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else find_spec(name)
    )


def test_tpu_topology_without_libtpu_asks_for_the_tpu_extra(monkeypatch):
    _hide_libtpu(monkeypatch)
    with pytest.raises(aot.TpuUnavailableError, match=r"pip install 'jaxdl\[tpu\]'"):
        aot.topology_devices("v5p:2x2x1")


def _device(kind, coords, core):
    return SimpleNamespace(device_kind=kind, coords=coords, core_on_chip=core, id=0)


def test_hbm_per_device_splits_a_chip_between_its_cores():
    v5p = [_device("TPU v5", (i, 0, 0), 0) for i in range(4)]
    assert aot.hbm_bytes_per_device(v5p) == 95 * 2**30
    v4 = [_device("TPU v4", (i // 2, 0, 0), i % 2) for i in range(8)]  # 2 cores per chip
    assert aot.hbm_bytes_per_device(v4) == 16 * 2**30
    assert aot.hbm_bytes_per_device(jax.devices()[:1]) is None


def test_format_bytes_uses_binary_units():
    assert aot.format_bytes(512) == "512 B"
    assert aot.format_bytes(1536) == "1.5 KiB"
    assert aot.format_bytes(3 * 2**30) == "3.0 GiB"


MATMULS_HLO = """\
HloModule m, num_partitions=1

ENTRY %main (x: f32[1,5,1], k: f32[3,1,1], a: f32[2,3], b: f32[3,4]) -> f32[2,4] {
  %x = f32[1,5,1]{2,1,0} parameter(0)
  %k = f32[3,1,1]{2,1,0} parameter(1)
  %a = f32[2,3]{1,0} parameter(2)
  %b = f32[3,4]{1,0} parameter(3)
  %conv = f32[1,5,1]{2,1,0} convolution(%x, %k), window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f
  ROOT %dot = f32[2,4]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_matmul_flops_count_only_the_convolution_taps_that_hit_real_inputs():
    # 'same' 3-tap conv over 5 positions: 5*3 taps minus the 2 that fall on padding -> 13 MACs;
    # the [2,3]x[3,4] dot: 2*4 outputs x 3 MACs. Two FLOPs per multiply-add.
    assert aot.hlo_matmul_flops(MATMULS_HLO) == 2 * 13 + 2 * 2 * 4 * 3


def _lenet_report(sizes):
    mesh = make_mesh(sizes, jax.devices()[:8])
    example = jax.ShapeDtypeStruct((28, 28, 1), jnp.float32)
    model = get_model("lenet5", num_classes=10)
    return compile_train_step(model, optax.adam(1e-3), mesh, 16, example)


def test_per_device_state_memory_shrinks_with_the_fsdp_degree():
    # The state (params + two Adam moments) dominates the arguments; FSDP splits it.
    dp8, fsdp2, fsdp8 = map(_lenet_report, ({"data": 8}, {"data": 4, "fsdp": 2}, {"fsdp": 8}))
    assert fsdp8.memory.argument_bytes < fsdp2.memory.argument_bytes < dp8.memory.argument_bytes
    assert fsdp8.memory.argument_bytes < dp8.memory.argument_bytes / 3
    assert dp8.memory.argument_bytes >= 3 * dp8.param_bytes  # replicated params + moments
    assert dp8.memory.peak_bytes > dp8.memory.argument_bytes


def _lm_report(scan_layers):
    model = get_model(
        "transformer_lm",
        vocab_size=128,
        num_layers=3,
        num_heads=2,
        embed_dim=32,
        mlp_dim=64,
        max_len=16,
        scan_layers=scan_layers,
    )
    mesh = make_mesh({"fsdp": 4}, jax.devices()[:4])
    example = jax.ShapeDtypeStruct((16,), jnp.int32)
    return compile_train_step(model, optax.adamw(1e-3), mesh, 8, example)


def test_scanned_layers_count_loop_bodies_by_their_trip_count():
    scanned, unrolled = _lm_report(True), _lm_report(False)
    assert scanned.batch_shapes == {"inputs": (8, 16), "labels": (8, 16)}
    # The same maths compiled as a 3-trip while loop or as 3 copies of the block: the
    # loop-aware dot FLOPs agree exactly; XLA's own count sees the loop body once.
    assert scanned.matmul_flops == pytest.approx(unrolled.matmul_flops)
    assert scanned.xla_flops < 0.8 * unrolled.xla_flops
    # Without loops, the dot/conv count is XLA's count minus elementwise work.
    assert 0.8 * unrolled.xla_flops < unrolled.matmul_flops <= unrolled.xla_flops
    # The per-layer gradient reduce-scatters (jaxdl.parallel.gradients) run inside the loop:
    # counted 3 times they move what the unrolled copies move. (All-gathers legitimately
    # differ: the scanned backward pass re-gathers each layer's shard, ZeRO-3 style, where XLA
    # keeps unrolled layers' gathered params alive from the forward pass.)
    assert scanned.collectives.unknown_trip_count_loops == 0
    scanned_kinds, unrolled_kinds = scanned.collectives.by_kind, unrolled.collectives.by_kind
    assert scanned_kinds["reduce-scatter"].count > 0
    assert scanned_kinds["reduce-scatter"].bytes == pytest.approx(
        unrolled_kinds["reduce-scatter"].bytes, rel=1e-2
    )
    assert scanned_kinds["all-gather"].bytes > 1.5 * unrolled_kinds["all-gather"].bytes
    # What is left to all-reduce (the parameters too small to shard, the loss) is small.
    for kinds in (scanned_kinds, unrolled_kinds):
        assert kinds["all-reduce"].bytes < 0.05 * kinds["reduce-scatter"].bytes


def test_compile_command_rejects_a_bad_topology_in_one_line(capsys):
    config = os.path.join(REPO, "experiments", "digits_resnet.py")
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "--config", config, "--topology", "cpu:99"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs 99 CPU devices" in err


def test_compile_command_without_libtpu_names_the_extra(monkeypatch, capsys):
    _hide_libtpu(monkeypatch)
    config = os.path.join(REPO, "experiments", "digits_resnet.py")
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "--config", config, "--topology", "v5p:2x2x1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "jaxdl: error: install the tpu extra: pip install 'jaxdl[tpu]'\n"
    )


@pytest.mark.slow  # CI time (18 s): compile_lowered's TPU tests above stay in make test
@needs_libtpu
def test_compile_command_reports_a_tpu_topology_end_to_end(tmp_path):
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "jaxdl",
        "compile",
        "--config",
        os.path.join(REPO, "experiments", "digits_resnet.py:depth=8"),
        "--topology",
        "v5p:2x2x1",
        "--json",
        str(report_path),
        "--config.train.batch_size=16",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in ("4 x TPU v5", "peak memory per device", "HBM: fits", "FLOPs", "all-reduce"):
        assert expected in done.stdout
    report = json.loads(report_path.read_text())
    assert report["num_devices"] == 4 and report["mesh_sizes"]["data"] == 4
    assert report["batch_shapes"] == {"inputs": [16, 8, 8, 1], "labels": [16]}
    assert report["hbm_bytes"] == 95 * 2**30 and report["fits"] is True
    assert report["memory"]["argument_bytes"] > report["param_bytes"]  # params + momentum
    assert report["matmul_flops"] > 0 and report["xla_flops"] > 0
    all_reduce = report["collectives"]["by_kind"]["all-reduce"]
    assert all_reduce["count"] > 0
    assert all_reduce["bytes"] >= 0.99 * report["minimum_bytes"]


@needs_libtpu
def test_a_step_too_large_for_hbm_is_reported_as_not_fitting():
    devices = aot.topology_devices("v5e:2x2")  # 16 GiB per chip
    # A 2^22 x 1024 float32 token table is 16 GiB, replicated on every device under DP.
    model = get_model(
        "transformer_lm",
        vocab_size=2**22,
        num_layers=1,
        num_heads=2,
        embed_dim=1024,
        mlp_dim=64,
        max_len=8,
    )
    mesh = make_mesh({"data": 4}, devices)
    with pytest.raises(aot.DoesNotFitError, match="does not fit on TPU v5 lite"):
        compile_train_step(model, optax.sgd(0.1), mesh, 4, jax.ShapeDtypeStruct((8,), jnp.int32))
