"""Tests for ``jaxdl.parallel.sharding_report`` and ``jaxdl shardings`` on 8 fake CPU devices.

GPT-2 small is only ever ``jax.eval_shape``'d: its layout is read without allocating a parameter.
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import pytest

from jaxdl.cli import main
from jaxdl.experiment import build_experiment
from jaxdl.models import get_model
from jaxdl.parallel import make_mesh
from jaxdl.parallel.rules import DEFAULT_RULES, logical_to_shardings, rules_with_overrides
from jaxdl.parallel.sharding_report import abstract_params, sharding_report
from tests.helpers import tiny_digits_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "experiments", "digits_resnet.py")

# GPT-2 small (float32), written out so the expectations do not come from the code under test.
VOCAB, EMBED, HEADS, HEAD_DIM, MLP, LAYERS, MAX_LEN = 50257, 768, 12, 64, 3072, 12, 1024
LAYER = (
    3 * (EMBED * EMBED + EMBED) + EMBED * EMBED + EMBED + 4 * EMBED + 2 * EMBED * MLP + MLP + EMBED
)
TOTAL = VOCAB * EMBED + MAX_LEN * EMBED + 2 * EMBED + LAYERS * LAYER
# What ``heads`` touches per layer: the query/key/value kernels and biases and the out kernel.
HEADS_PARAMS = LAYERS * (
    3 * (EMBED * HEADS * HEAD_DIM + HEADS * HEAD_DIM) + HEADS * HEAD_DIM * EMBED
)


@pytest.fixture(scope="module")
def gpt2_params():
    mesh = make_mesh({"tensor": 8})
    # Hugging Face's layout (separate q/k/v, 50,257 rows), not the preset's padded, fused one.
    model = get_model("gpt2_small", qkv_fused=False, vocab_divisible_by=1)
    return abstract_params(model, lambda: ((jnp.zeros((1, 8), jnp.int32),), {}), mesh)


def test_gpt2_small_under_tensor_8_reports_vocab_and_heads_fallbacks(gpt2_params):
    report = sharding_report(gpt2_params, make_mesh({"tensor": 8}))
    assert TOTAL == 124_439_808  # GPT-2 small's published size (tied embeddings)
    assert report.total_bytes == 4 * TOTAL
    groups = {(f.logical, f.size, f.axis, f.axis_size) for _, f in report.fallbacks}
    assert groups == {("vocab", VOCAB, "tensor", 8), ("heads", HEADS, "tensor", 8)}
    assert len(report.fallbacks) == 8  # the embedding; q/k/v kernels and biases; out kernel
    share = (VOCAB * EMBED + HEADS_PARAMS) / TOTAL
    assert report.replicated_share == pytest.approx(share)
    # Under the rules, the vocabulary would be padded to 8 x 6283 rows and 12 heads to 8 x 2.
    padded = math.ceil(VOCAB / 8) * EMBED + HEADS_PARAMS * 2 // HEADS
    assert report.fallback_bytes_per_device == 4 * (VOCAB * EMBED + HEADS_PARAMS - padded)
    assert report.warning() == (
        "sharding fallback: 8 parameter dimensions replicated because the mesh axis does not "
        "divide the size (vocab 50257 over tensor=8, heads 12 over tensor=8): 53.8% of parameter "
        "bytes replicated, +218.9 MiB per device; model.vocab_divisible_by pads the vocabulary"
    )
    rows = {p.path: p for p in report.params}
    embedding = rows["token_embed/embedding"]
    assert embedding.logical_axes == ("vocab", "embed")
    assert tuple(embedding.rule_spec) == ("tensor", "fsdp")
    assert tuple(embedding.spec) == (None, "fsdp")
    assert embedding.bytes_per_device == embedding.bytes  # fsdp=1: held whole by every device
    wi = rows["decoder/layers/mlp/wi/kernel"]
    assert not wi.fallbacks and wi.bytes_per_device * 8 == wi.bytes == 4 * LAYERS * EMBED * MLP


def test_the_gpt2_preset_pads_its_vocabulary_so_only_the_heads_fall_back():
    mesh = make_mesh({"tensor": 8})
    params = abstract_params(
        get_model("gpt2_small"), lambda: ((jnp.zeros((1, 8), jnp.int32),), {}), mesh
    )
    report = sharding_report(params, mesh)
    assert {(f.logical, f.size) for _, f in report.fallbacks} == {("heads", HEADS)}
    embedding = {p.path: p for p in report.params}["token_embed/embedding"]
    assert embedding.shape == (50_304, EMBED) and tuple(embedding.spec) == ("tensor", "fsdp")


def test_dimensions_the_mesh_divides_give_no_warning(gpt2_params):
    report = sharding_report(gpt2_params, make_mesh({"fsdp": 8}))
    assert report.fallbacks == [] and report.warning() is None
    assert report.replicated_share == 0.0 and report.fallback_bytes_per_device == 0
    assert "0.0% replicated by fallback" in report.format_table().splitlines()[-1]


@pytest.mark.parametrize("sizes", [{"tensor": 8}, {"fsdp": 2, "tensor": 4}, {"fsdp": 8}])
def test_bytes_per_device_match_the_shardings_the_trainer_uses(gpt2_params, sizes):
    mesh = make_mesh(sizes)
    report = sharding_report(gpt2_params, mesh)
    shardings = logical_to_shardings(gpt2_params, mesh, DEFAULT_RULES)
    flat = dict(zip((p.path for p in report.params), jax.tree.leaves(shardings), strict=True))
    for param in report.params:
        sharding = flat[param.path]
        assert param.spec == sharding.spec, param.path
        assert param.bytes_per_device == 4 * math.prod(sharding.shard_shape(param.shape))
    assert report.bytes_per_device == sum(p.bytes_per_device for p in report.params)
    assert report.bytes_per_device < report.total_bytes


def test_a_rule_override_replicating_vocab_is_not_a_fallback(gpt2_params):
    rules = rules_with_overrides((("vocab", None),))
    report = sharding_report(gpt2_params, make_mesh({"tensor": 8}), rules)
    embedding = next(p for p in report.params if p.path == "token_embed/embedding")
    assert tuple(embedding.rule_spec) == (None, "fsdp") and not embedding.fallbacks
    assert {f.logical for _, f in report.fallbacks} == {"heads"}
    assert report.replicated_share == pytest.approx(HEADS_PARAMS / TOTAL)
    assert "vocab" not in report.warning()


def test_build_experiment_logs_nothing_without_a_fallback(caplog):
    experiment = build_experiment(tiny_digits_config(3, "--config.mesh.strategy=dp"))
    assert experiment.sharding_report.fallbacks == []
    assert not [r for r in caplog.records if r.name == "jaxdl"]


def test_shardings_command_prints_every_parameter_and_warns_once(tmp_path, capsys, caplog):
    report_path = tmp_path / "shardings.json"
    argv = ["shardings", "--config", DIGITS, "--topology", "cpu:8", "--json", str(report_path)]
    assert main([*argv, "--config.mesh.strategy=fsdp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "mesh data=1 fsdp=8 sequence=1 tensor=1"
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in lines[3:-1])}
    # The 1-channel stem cannot be split over fsdp=8; a 64->64 conv is (3*3*64*64*4 B) / 8.
    assert rows["stem_conv/kernel"] == [
        "3x3x1x16",
        "(conv_height, conv_width, conv_in, conv_out)",
        "(-, -, -, tensor)",
        "576 B",
        "conv_in 1 over fsdp=8",
    ]
    assert rows["stage3_block2/conv1/kernel"][2:] == ["(-, -, fsdp, tensor)", "18.0 KiB"]
    assert (
        lines[-1]
        == "total: 65 parameters, 1.0 MiB, 138.8 KiB per device, 0.1% replicated by fallback"
    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "jaxdl"]
    assert len(warnings) == 1
    assert warnings[0].startswith("sharding fallback: 1 parameter dimension replicated")
    assert "(conv_in 1 over fsdp=8)" in warnings[0]
    saved = json.loads(report_path.read_text())
    assert saved["warning"] == warnings[0] and len(saved["params"]) == 65
    assert saved["bytes_per_device"] == sum(p["bytes_per_device"] for p in saved["params"])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--topology", "cpu:99"], "needs 99 CPU devices"),
        (["--config.mesh.strateg=fsdp"], "strateg"),
    ],
)
def test_shardings_command_rejects_bad_input_in_one_line(capsys, extra, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(["shardings", "--config", DIGITS, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxdl: error:") and needle in err
