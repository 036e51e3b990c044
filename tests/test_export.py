"""Export: every model family through StableHLO (jax.export) and ONNX (jax2onnx → onnxruntime),
reloaded without the model's code, agrees with the model in JAX for several batch sizes."""

import csv
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdl.errors import UserError
from jaxdl.export import (
    TOLERANCE,
    ExportMismatchError,
    export_model,
    inference_function,
    load_exported,
    read_metadata,
)
from jaxdl.export import formats as export_formats
from jaxdl.models import get_model
from jaxdl.tasks.classification import ImageClassification, SequenceClassification
from jaxdl.tasks.ctc import CTCSpeechRecognition

jax2onnx_installed = pytest.mark.skipif(
    importlib.util.find_spec("jax2onnx") is None, reason="jax2onnx not installed"
)


def _image_family(model_name, **kwargs):
    def build():
        task = ImageClassification(input_shape=(12, 12, 3), num_classes=5)
        return task, get_model(model_name, num_classes=5, **kwargs)

    def inputs(rng, batch):
        return {"inputs": rng.normal(size=(batch, 12, 12, 3)).astype(np.float32)}

    return build, inputs


def _text_family():
    def build():
        task = SequenceClassification(max_len=16, num_classes=3)
        model = get_model(
            "transformer_classifier", vocab_size=50, num_classes=3, num_layers=2, num_heads=2,
            embed_dim=16, mlp_dim=32, max_len=16,
        )  # fmt: skip
        return task, model

    def inputs(rng, batch):
        tokens = rng.integers(1, 50, size=(batch, 16)).astype(np.int32)
        for row, length in enumerate(rng.integers(1, 17, size=batch)):
            tokens[row, length:] = 0  # right padding, masked out of attention and pooling
        return {"tokens": tokens}

    return build, inputs


def _speech_family():
    def build():
        task = CTCSpeechRecognition(max_samples=4000, max_label_len=8)
        # Two output frames per encoder frame, as experiments/speech_conformer.py trains.
        return task, get_model("conformer_ctc_tiny", vocab_size=12, output_upsampling=2)

    def inputs(rng, batch):
        lengths = rng.integers(1000, 4001, size=batch).astype(np.int32)
        audio = rng.normal(size=(batch, 4000)).astype(np.float32) * 0.1
        audio[np.arange(4000)[None, :] >= lengths[:, None]] = 0.0
        return {"audio": audio, "audio_length": lengths}

    return build, inputs


FAMILIES = {
    "resnet": _image_family("resnet", depth=8, width=8, stem="cifar"),
    # 7x7/2 conv + 3x3/2 max-pool with padding 1 (jax2onnx drops nn.max_pool's own padding).
    "resnet_imagenet_stem": _image_family("resnet", depth=8, width=8, stem="imagenet"),
    # 'SAME' 2x2 max-pools on odd sizes (12 -> 6 -> 3 -> 2 -> 1): asymmetric padding.
    "vgg": _image_family("vgg", depth=11, width_multiplier=0.0625, hidden=16),
    "transformer_classifier": _text_family(),
    "conformer_ctc": _speech_family(),
}
# (family, format) pairs that do not convert yet, with the reason the README's table gives.
GAPS: dict[tuple[str, str], str] = {}


@functools.cache  # one init per family, shared by both formats
def _inference(family):
    build, make_inputs = FAMILIES[family]
    task, model = build()
    rng = np.random.default_rng(0)
    sample = make_inputs(rng, 2)
    args, kwargs = task.init_inputs(2)
    variables = jax.jit(lambda key: model.init(key, *args, train=False, **kwargs))(
        jax.random.key(0)
    )
    return inference_function(task, model, variables), make_inputs, sample


# Pairs whose code path another fast pair already covers run with the slow tests (CI time).
# The ImageNet-stem ResNet's fast pairs cover the CIFAR-stem ResNet's blocks; the Conformer's
# ONNX pair covers its graph, the other families' StableHLO pairs that format.
SLOW_PAIRS = {
    ("vgg", "stablehlo"),
    ("vgg", "onnx"),
    ("resnet", "stablehlo"),
    ("resnet", "onnx"),
    ("conformer_ctc", "stablehlo"),
}


def _marks(family, fmt):
    marks = [jax2onnx_installed] if fmt == "onnx" else []
    return marks + ([pytest.mark.slow] if (family, fmt) in SLOW_PAIRS else [])


CASES = [
    pytest.param(family, fmt, marks=_marks(family, fmt))
    for family in FAMILIES
    for fmt in ("stablehlo", "onnx")
    if (family, fmt) not in GAPS
]


@pytest.mark.parametrize("family,fmt", CASES)
def test_export_reloads_without_model_code_and_matches_jax_at_any_batch_size(tmp_path, family, fmt):
    inference, make_inputs, sample = _inference(family)
    out = tmp_path / "export"
    meta = export_model(inference, fmt, str(out), sample, {"task": family})
    assert meta["verified"]["examples"] == 2
    assert max(meta["verified"]["max_abs_error"].values()) <= TOLERANCE
    run = load_exported(str(out))
    rng = np.random.default_rng(1)
    for batch in (1, 5):  # one graph, a dynamic batch dimension (verified at 2 on export)
        inputs = make_inputs(rng, batch)
        expected, got = inference(inputs), run(inputs)
        assert set(got) == set(expected) == set(meta["outputs"])
        for name, want in expected.items():
            assert got[name].shape == want.shape
            if np.issubdtype(want.dtype, np.integer):
                np.testing.assert_array_equal(got[name], want)
            else:
                np.testing.assert_allclose(got[name], want, atol=TOLERANCE, rtol=0)


def test_the_metadata_describes_inputs_outputs_and_versions(tmp_path):
    inference, _, sample = _inference("transformer_classifier")
    export_model(inference, "stablehlo", str(tmp_path / "e"), sample, {"class_names": ["a", "b"]})
    meta = read_metadata(str(tmp_path / "e"))
    assert meta["inputs"] == {"tokens": {"shape": ["batch", 16], "dtype": "int32"}}
    assert meta["outputs"] == ["logits", "probabilities"]
    assert meta["class_names"] == ["a", "b"] and meta["format"] == "stablehlo"
    assert {"jax", "jaxlib", "flax"} <= set(meta["versions"])


def test_a_graph_that_disagrees_with_jax_is_removed_and_reported(tmp_path, monkeypatch):
    inference, _, sample = _inference("resnet")
    real = export_formats.LOADERS["stablehlo"]

    def skewed(*args):
        run = real(*args)
        return lambda inputs: {k: v + 1e-3 for k, v in run(inputs).items()}

    monkeypatch.setitem(export_formats.LOADERS, "stablehlo", skewed)
    with pytest.raises(ExportMismatchError, match="differs from the JAX model"):
        export_model(inference, "stablehlo", str(tmp_path / "bad"), sample, {})
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "inputs,message",
    [
        ({}, "missing input 'tokens'"),
        ({"tokens": np.zeros((2, 15), np.int32)}, r"shape \[2, 15\].*\[batch, 16\]"),
        ({"tokens": np.zeros((2, 16), np.float32)}, "must hold int32 values"),
        ({"tokens": np.zeros(16, np.int32)}, r"shape \[16\]"),
        ({"tokens": [[1, 2], [3]]}, "not a rectangular array|must hold int32"),
    ],
)
def test_a_loaded_export_names_what_is_wrong_with_its_inputs(tmp_path, inputs, message):
    inference, _, sample = _inference("transformer_classifier")
    export_model(inference, "stablehlo", str(tmp_path / "e"), sample, {})
    run = load_exported(str(tmp_path / "e"))
    with pytest.raises(UserError, match=message):
        run(inputs)


def test_export_refuses_a_non_empty_directory_and_an_unknown_format(tmp_path):
    inference, _, sample = _inference("resnet")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        export_model(inference, "stablehlo", str(tmp_path / "taken"), sample, {})
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    with pytest.raises(UserError, match="unknown export format"):
        export_model(inference, "coreml", str(tmp_path / "new"), sample, {})
    with pytest.raises(UserError, match="not a jaxdl export"):
        load_exported(str(tmp_path / "taken"))


@pytest.mark.slow  # trains a run first (~35 s)
def test_jaxdl_export_cli_writes_a_verified_graph_of_the_best_checkpoint(tmp_path):
    workdir, out = tmp_path / "run", tmp_path / "exported"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    train = [sys.executable, "-m", "jaxdl", "train", "--workdir", str(workdir), "--config",
             "experiments/digits_resnet.py:depth=8,epochs=3", "--config.model.width=8"]  # fmt: skip
    subprocess.run(train, check=True, capture_output=True, env=env)
    export = [sys.executable, "-m", "jaxdl", "export", "--workdir", str(workdir),
              "--format", "stablehlo", "--out", str(out)]  # fmt: skip
    done = subprocess.run(export, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "max |export - jax| on 8 test examples" in done.stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["task"] == "image_classification" and meta["model"] == "resnet"
    assert meta["class_names"] == [str(d) for d in range(10)]
    again = subprocess.run(export, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    # jaxdl predict over the test split agrees with the evaluation written at the end of training.
    predictions = tmp_path / "predictions.csv"
    predict = [sys.executable, "-m", "jaxdl", "predict", "--workdir", str(workdir),
               "--out", str(predictions)]  # fmt: skip
    done = subprocess.run(predict, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    results = json.loads((workdir / "results.json").read_text())
    with open(predictions) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == sum(results["per_class"][c]["support"] for c in results["per_class"])
    accuracy = np.mean([row["prediction"] == row["label"] for row in table])
    assert accuracy == pytest.approx(results["accuracy"], abs=1e-12)
    analysis = json.loads((workdir / "analysis" / "analysis_test.json").read_text())
    assert analysis["accuracy"] == pytest.approx(results["accuracy"], abs=1e-12)
    # jaxdl explain and jaxdl robustness on the same run.
    explain = [sys.executable, "-m", "jaxdl", "explain", "--workdir", str(workdir),
               "--method", "gradcam", "--count", "2"]  # fmt: skip
    done = subprocess.run(explain, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert len(list((workdir / "explain_gradcam").glob("test_*_gradcam.png"))) == 2
    robustness = [sys.executable, "-m", "jaxdl", "robustness", "--workdir", str(workdir),
                  "--epsilons", "0,0.1", "--count", "64"]  # fmt: skip
    done = subprocess.run(robustness, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((workdir / "robustness_test.json").read_text())
    rows = {row["epsilon"]: row for row in report["rows"]}
    assert rows[0.0]["fgsm"] == rows[0.0]["pgd"] == report["clean_accuracy"]
    assert rows[0.1]["pgd"] <= rows[0.1]["fgsm"] <= report["clean_accuracy"]
    if importlib.util.find_spec("jax2onnx") is None:
        return
    # ONNX, then static int8 calibrated on training examples: accuracy within 0.02 of float32.
    onnx_dir, int8_dir = tmp_path / "onnx", tmp_path / "int8"
    export[export.index("stablehlo")], export[-1] = "onnx", str(onnx_dir)
    done = subprocess.run(export, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    quantize = [sys.executable, "-m", "jaxdl", "quantize", "--workdir", str(workdir),
                "--export", str(onnx_dir), "--mode", "static", "--out", str(int8_dir)]  # fmt: skip
    done = subprocess.run(quantize, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((int8_dir / "quantization_report.json").read_text())
    assert report["float32"]["test_accuracy"] == pytest.approx(results["accuracy"], abs=1e-12)
    assert report["int8"]["test_accuracy"] >= report["float32"]["test_accuracy"] - 0.02
    assert report["int8"]["bytes"] < 0.5 * report["float32"]["bytes"]
