"""INT8 quantisation of ONNX exports: static QDQ for CNNs, dynamic for Transformers; the int8
graph is smaller, tracks the float32 outputs and refuses what it cannot quantise."""

import numpy as np
import onnx
import pytest

from jaxdl.errors import UserError
from jaxdl.export import export_model, load_exported
from jaxdl.export.quantize import graph_size_bytes, quantize_export
from tests.test_export import _inference, jax2onnx_installed

pytestmark = jax2onnx_installed


@pytest.mark.parametrize(
    "family,mode",
    [
        # CI time: static calibration runs with `make test-slow` (27 s); dynamic stays.
        pytest.param("resnet_imagenet_stem", "static", marks=pytest.mark.slow),
        ("transformer_classifier", "dynamic"),
    ],
)
def test_int8_export_is_smaller_and_tracks_float32(tmp_path, family, mode):
    inference, make_inputs, sample = _inference(family)
    export_model(inference, "onnx", str(tmp_path / "f32"), sample, {})
    rng = np.random.default_rng(3)
    calibration = [make_inputs(rng, 16) for _ in range(4)]
    meta = quantize_export(str(tmp_path / "f32"), str(tmp_path / "int8"), mode, calibration)
    assert meta["quantization"]["mode"] == mode
    assert meta["quantization"]["calibration_examples"] == 64
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    if mode == "static":  # int8 weights in QDQ: 3-4x smaller on real CNNs, ~2x on this tiny one
        assert graph_size_bytes(str(tmp_path / "int8")) < 0.6 * graph_size_bytes(
            str(tmp_path / "f32")
        )
        assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    else:  # int8 matmuls with activations quantised per batch
        assert any(node.op_type == "DynamicQuantizeLinear" for node in graph.node)
    inputs = make_inputs(np.random.default_rng(4), 8)  # held-out inputs, a new batch size
    want = load_exported(str(tmp_path / "f32"))(inputs)["logits"]
    got = load_exported(str(tmp_path / "int8"))(inputs)["logits"]
    assert got.shape == want.shape
    # int8 noise is small beside the spread of the logits (random init: small logits).
    assert np.max(np.abs(got - want)) < 0.1 * np.ptp(want) + 1e-3
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_quantize_refuses_stablehlo_requantising_and_an_unknown_mode(tmp_path):
    inference, make_inputs, sample = _inference("resnet")
    export_model(inference, "stablehlo", str(tmp_path / "hlo"), sample, {})
    batches = [make_inputs(np.random.default_rng(0), 4)]
    with pytest.raises(UserError, match="stablehlo export; quantisation needs onnx"):
        quantize_export(str(tmp_path / "hlo"), str(tmp_path / "q"), "static", batches)
    export_model(inference, "onnx", str(tmp_path / "onnx"), sample, {})
    with pytest.raises(UserError, match="unknown quantisation mode"):
        quantize_export(str(tmp_path / "onnx"), str(tmp_path / "q"), "int4", batches)
    with pytest.raises(UserError, match="at least one calibration batch"):
        quantize_export(str(tmp_path / "onnx"), str(tmp_path / "q"), "static", [])
    quantize_export(str(tmp_path / "onnx"), str(tmp_path / "q"), "dynamic", batches)
    with pytest.raises(UserError, match="already quantised"):
        quantize_export(str(tmp_path / "q"), str(tmp_path / "q2"), "dynamic", batches)
    assert not (tmp_path / "q2").exists()
