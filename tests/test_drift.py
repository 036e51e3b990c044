"""Drift monitoring (``jaxdl.monitoring``): PSI, KS and MMD² against hand computations and scipy,
shifted windows flagged and in-distribution ones not, the server's drift gauges, the reference
written into an export before its metadata, and ``jaxdl drift``'s report and one-line errors."""

import inspect
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from jaxdl.cli import main
from jaxdl.export import export_experiment
from jaxdl.export import formats as export_formats
from jaxdl.monitoring import reference as reference_module
from jaxdl.monitoring.reference import (
    REFERENCE_ARRAYS,
    REFERENCE_SUMMARY,
    DriftReference,
    compute_reference,
    feature_plan,
    input_features,
)
from jaxdl.monitoring.report import compare_window, drift_report, window_bounds
from jaxdl.monitoring.server import DriftMonitor, server_monitor
from jaxdl.monitoring.statistics import (
    PSI_EPSILON,
    categorical_psi,
    ks_test,
    mmd2,
    mmd_test,
    psi,
)
from jaxdl.serving import create_app
from jaxdl.tasks.base import Field
from jaxdl.tasks.classification import ImageClassification
from tests.test_serving import (  # noqa: F401  (the serving tests' fixtures, reused)
    CLASS_NAMES,
    MAX_BATCH,
    SHAPE,
    _metrics,
    _sample,
    app,
    classifier,
    client,
)

# 1,000 evenly spaced reference values: their deciles cut [0, 1) into ten bins of 100 values.
GRID = (np.arange(1000) + 0.5) / 1000
CENTRES = np.arange(10) / 10 + 0.05


def _with_counts(counts) -> np.ndarray:
    return np.repeat(CENTRES, counts)


def test_psi_equals_a_hand_computation_on_constructed_histograms():
    # Window proportions .2, .1 x 7, .05, .05 against .1 each: 0.1 ln 2 + 2 (-0.05) ln 0.5.
    window = _with_counts([20, 10, 10, 10, 10, 10, 10, 10, 5, 5])
    assert psi(GRID, window) == pytest.approx(0.2 * math.log(2), rel=1e-12)
    # An empty bin counts as PSI_EPSILON (1e-4), not as an infinite term.
    window = _with_counts([0, 20, 10, 10, 10, 10, 10, 10, 10, 10])
    expected = (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1) + 0.1 * math.log(2)
    assert psi(GRID, window) == pytest.approx(expected, rel=1e-12)
    assert psi(GRID, GRID) == 0.0
    # Classes: one bin each.
    reference, current = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])
    assert categorical_psi(reference, current, 2) == pytest.approx(
        0.25 * math.log(1.5) - 0.25 * math.log(0.5), rel=1e-12
    )


def test_psi_is_near_zero_for_samples_of_one_distribution_and_ks_is_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert psi(a, b) < 0.01
    assert psi(a, b + 1.0) > 0.25
    counts = rng.integers(0, 40, size=3000)  # a discrete feature: tied quantiles merge bins
    assert psi(counts, rng.integers(0, 40, size=3000)) < 0.02
    for x, y in ((a, b), (a, b + 0.2), (a[:30], b[:50])):
        result = scipy.stats.ks_2samp(x, y)
        assert ks_test(x, y) == (result.statistic, result.pvalue)


def _naive_mmd2(x, y, sigma):
    k = lambda u, v: math.exp(-np.sum((u - v) ** 2) / (2 * sigma**2))  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_is_the_unbiased_estimate_near_zero_without_shift_and_tested_by_permutation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(6, 3)) + 0.5
    assert mmd2(x, y, bandwidth=1.3) == pytest.approx(_naive_mmd2(x, y, 1.3), rel=1e-10)
    same_a, same_b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + 1.0
    assert abs(mmd2(same_a, same_b)) < 0.01
    assert mmd2(same_a, shifted) > 0.1
    value, p_value, bandwidth = mmd_test(same_a, same_b, permutations=200, seed=0)
    assert abs(value) < 0.01 and p_value > 0.05 and bandwidth > 0
    value, p_value, _ = mmd_test(same_a, shifted, permutations=200, seed=0)
    assert p_value < 0.05 and p_value == pytest.approx(1 / 201)  # no relabelling reaches it


SPEC = {"inputs": Field(np.float32, SHAPE)}


def _population(rng, count: int, brightness: float = 0.0, classes=range(5)):
    """Images whose per-example brightness varies, a class per image (what a model would
    predict) and class-dependent 16-d embeddings."""
    labels = rng.choice(np.asarray(classes), size=count)
    images = rng.normal(size=(count, *SHAPE)) + rng.normal(scale=0.3, size=(count, 1, 1, 1))
    centres = np.random.default_rng(99).normal(size=(5, 16))
    embeddings = centres[labels] + rng.normal(size=(count, 16))
    return (images + brightness).astype(np.float32), labels.astype(np.int32), embeddings


def _synthetic_reference(rng) -> DriftReference:
    images, labels, embeddings = _population(rng, 2000)
    plan = feature_plan(SPEC)
    return DriftReference(
        plan, input_features(plan, {"inputs": images}), labels, 5, embeddings[:500], {"seed": 0}
    )


def _window(reference, rng, **population):
    images, labels, embeddings = _population(rng, 250, **population)
    features = input_features(reference.plan, {"inputs": images})
    return compare_window(reference, features, labels, embeddings, permutations=100)


def test_a_shifted_window_is_flagged_and_an_in_distribution_one_is_not():
    rng = np.random.default_rng(1)
    reference = _synthetic_reference(rng)
    assert set(reference.features) == {"inputs_mean_c0", "inputs_std_c0"}
    calm = _window(reference, rng)
    assert calm["status"] == "ok", calm["reasons"]
    assert max(f["psi"] for f in calm["features"].values()) < 0.1
    assert calm["prediction_psi"] < 0.1 and calm["embedding_mmd_pvalue"] > 0.05
    bright = _window(reference, rng, brightness=0.5)
    assert bright["status"] == "drift"
    assert bright["features"]["inputs_mean_c0"]["psi"] > 0.25
    assert bright["features"]["inputs_mean_c0"]["ks_pvalue"] < 1e-6
    assert any(r.startswith("inputs_mean_c0 PSI") for r in bright["reasons"])
    imbalanced = _window(reference, rng, classes=(0, 1))  # same images, two classes only
    assert imbalanced["status"] == "drift"
    assert imbalanced["prediction_psi"] > 0.25 and imbalanced["embedding_mmd_pvalue"] < 0.05
    assert max(f["psi"] for f in imbalanced["features"].values()) < 0.1


def test_a_report_splits_windows_and_a_short_remainder_joins_the_last():
    assert window_bounds(600, 250) == [(0, 250), (250, 600)]
    assert window_bounds(650, 250) == [(0, 250), (250, 500), (500, 650)]
    assert window_bounds(100, 250) == [(0, 100)]
    rng = np.random.default_rng(2)
    reference = _synthetic_reference(rng)
    parts = [_population(rng, 250), _population(rng, 250, brightness=0.5)]
    images, labels, embeddings = (np.concatenate(p) for p in zip(*parts, strict=True))
    features = input_features(reference.plan, {"inputs": images})
    report = drift_report(reference, features, labels, embeddings, 250, permutations=50)
    assert [w["status"] for w in report["windows"]] == ["ok", "drift"]
    assert report["drifted_windows"] == 1 and report["thresholds"]["psi_significant"] == 0.25
    json.dumps(report)  # JSON-ready


def test_the_reference_round_trips_through_its_files(tmp_path):
    reference = _synthetic_reference(np.random.default_rng(3))
    reference.save(str(tmp_path))
    loaded = DriftReference.load(str(tmp_path))
    for name, values in reference.features.items():
        np.testing.assert_array_equal(loaded.features[name], values)
        np.testing.assert_array_equal(loaded.edges[name], reference.edges[name])
    np.testing.assert_array_equal(loaded.predictions, reference.predictions)
    np.testing.assert_array_equal(loaded.embeddings, reference.embeddings)
    assert loaded.plan == reference.plan and loaded.info == {"seed": 0}
    summary = json.loads((tmp_path / REFERENCE_SUMMARY).read_text())
    assert summary["psi"] == {"bins": 10, "epsilon": PSI_EPSILON}
    assert len(summary["predicted_class_distribution"]) == 5


def test_text_and_audio_inputs_get_their_scalar_features():
    spec = {
        "tokens": Field(np.int32, (6,), pad_value=0),
        "audio": Field(np.float32, (4,)),
        "audio_length": Field(np.int32),
    }
    plan = feature_plan(spec, unk_id=1)
    tokens = np.array([[5, 1, 7, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32)
    audio = np.array([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    inputs = {"tokens": tokens, "audio": audio, "audio_length": np.array([2, 4], np.int32)}
    features = input_features(plan, inputs)
    np.testing.assert_allclose(features["tokens_length"], [3, 2])
    np.testing.assert_allclose(features["tokens_oov_rate"], [1 / 3, 1.0])
    np.testing.assert_allclose(features["audio_rms"], [2.5, 1.0])
    np.testing.assert_allclose(features["audio_length"], [2, 4])
    assert "tokens_oov_rate" not in input_features(feature_plan(spec), inputs)  # no unk id


def _images(count: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(count, *SHAPE)) + shift).astype(np.float32)


def test_the_server_exposes_drift_gauges_every_n_requests(classifier, app, client):  # noqa: F811
    plan = feature_plan(classifier.input_spec)
    inputs = {"inputs": _images(256, 0)}
    reference = compute_reference(classifier, inputs, plan, embed=False, batch_size=MAX_BATCH)
    # What create_app(..., drift_reference=, drift_every=4, drift_window=24) sets up, on the
    # serving tests' app (its buckets compiled once).
    app.state.drift = server_monitor(
        reference, classifier.input_names, app.state.metrics.add_drift_gauges, window=24, every=4
    )
    try:
        for step in range(4):
            reply = client.post("/predict", json={"inputs": {"inputs": _images(8, step).tolist()}})
            assert reply.status_code == 200, reply.text
        client.post("/predict", content=b"not json")  # refused requests are not observed
        app.state.drift.wait(30)
        metrics = _metrics(client)
        psi_samples = metrics["jaxdl_drift_psi"]
        assert {s.labels["feature"] for s in psi_samples} == {"inputs_mean_c0", "inputs_std_c0"}
        assert "jaxdl_drift_prediction_psi" in metrics and "jaxdl_drift_ks_pvalue" in metrics
        # A window of whole requests: the oldest leaves once the rest hold 24 examples.
        assert _sample(metrics["jaxdl_drift_window_examples"], "jaxdl_drift_window_examples") == 24
        assert _sample(metrics["jaxdl_drift_updates"], "jaxdl_drift_updates_total") == 1
        for step in range(4):
            shifted = _images(8, 10 + step, shift=2.0).tolist()
            assert client.post("/predict", json={"inputs": {"inputs": shifted}}).status_code == 200
        app.state.drift.wait(30)
        metrics = _metrics(client)
    finally:
        app.state.drift = None
    psi_mean = _sample(metrics["jaxdl_drift_psi"], "jaxdl_drift_psi", feature="inputs_mean_c0")
    assert psi_mean > 1.0
    assert _sample(metrics["jaxdl_drift_detected"], "jaxdl_drift_detected") == 1
    assert _sample(metrics["jaxdl_drift_updates"], "jaxdl_drift_updates_total") == 2
    assert app.state.batcher.compiled_sizes() == len(app.state.batcher.buckets)  # no compile


def test_create_app_takes_a_drift_reference_and_a_monitor_needs_the_models_inputs():
    reference = _synthetic_reference(np.random.default_rng(5))
    with pytest.raises(ValueError, match="describes inputs \\['inputs'\\]"):
        DriftMonitor(reference, ["tokens"], lambda result: None)
    assert server_monitor(reference, ["inputs"], lambda predictions: None, every=0) is None
    assert "drift_reference" in inspect.signature(create_app).parameters


def _fake_experiment(classifier, train_images):  # noqa: F811
    """What ``export_experiment`` reads of an experiment and a train state, around the
    classifier fixture's model (no training)."""
    records = [{"inputs": image, "labels": np.int32(0)} for image in train_images]
    splits = {"train": records, "val": records[:8], "test": records[:8]}
    experiment = SimpleNamespace(
        task=ImageClassification(input_shape=SHAPE, num_classes=5),
        model=classifier.model,
        config=SimpleNamespace(model=SimpleNamespace(name="resnet")),
        data=SimpleNamespace(info={"class_names": CLASS_NAMES}, get=splits.__getitem__),
    )
    state = SimpleNamespace(step=7, **classifier.variables)
    return experiment, state


def _drift(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main(["drift", *args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _export(experiment, state, directory) -> dict:
    return export_experiment(experiment, state, str(directory), "stablehlo", str(directory / "e"))


def test_an_export_writes_the_drift_reference_before_its_metadata(
    classifier,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    # The graph itself is the export tests' business: a stand-in format keeps this test fast.
    monkeypatch.setitem(export_formats.WRITERS, "stablehlo", lambda i, path, p: Path(path).touch())
    monkeypatch.setitem(export_formats.LOADERS, "stablehlo", lambda path, i, o: classifier)
    real = reference_module.write_export_reference

    def checked(*args):
        assert not (tmp_path / "e" / "metadata.json").exists()  # metadata.json comes last
        return real(*args)

    monkeypatch.setattr(reference_module, "write_export_reference", checked)
    experiment, state = _fake_experiment(classifier, _images(MAX_BATCH, 0))
    meta = _export(experiment, state, tmp_path)
    out = tmp_path / "e"
    assert meta["drift_reference"]["examples"] == MAX_BATCH
    assert meta["drift_reference"]["embedding_graph"] == "drift_embedding.stablehlo"
    assert json.loads((out / "metadata.json").read_text())["drift_reference"]["examples"] == 8
    metadata_time = os.stat(out / "metadata.json").st_mtime_ns
    for name in (REFERENCE_ARRAYS, REFERENCE_SUMMARY, "drift_embedding.stablehlo"):
        assert os.stat(out / name).st_mtime_ns <= metadata_time
    summary = json.loads((out / REFERENCE_SUMMARY).read_text())
    assert summary["embeddings"]["dim"] == 32 and summary["checkpoint_step"] == 7
    assert summary["split"] == "train" and sorted(summary["features"]) == [
        "inputs_mean_c0",
        "inputs_std_c0",
    ]


@pytest.mark.slow  # a real StableHLO export, then jaxdl drift runs its graphs (~10 s)
def test_jaxdl_drift_reports_on_an_export(classifier, tmp_path, capsys):  # noqa: F811
    experiment, state = _fake_experiment(classifier, _images(64, 0))
    _export(experiment, state, tmp_path)
    np.save(tmp_path / "calm.npy", _images(64, 1))
    np.savez(tmp_path / "bright.npz", inputs=_images(64, 2, shift=1.0))
    report_dir = tmp_path / "report"
    code, printed, _ = _drift(
        capsys, "--export", str(tmp_path / "e"), str(tmp_path / "calm.npy"),
        str(tmp_path / "bright.npz"), "--window", "64", "--permutations", "50",
        "--out", str(report_dir),
    )  # fmt: skip
    assert code == 0, printed
    report = json.loads((report_dir / "drift_report.json").read_text())
    assert [w["examples"] for w in report["windows"]] == [64, 64]
    assert report["windows"][1]["status"] == "drift"
    assert report["windows"][1]["embedding_mmd_pvalue"] < 0.05
    assert report["windows"][1]["features"]["inputs_mean_c0"]["psi"] > 1.0
    assert (report_dir / "drift_report.png").stat().st_size > 0
    assert "window(s) drifted" in printed


def _fake_export(tmp_path, with_reference: bool = True):
    """An export directory's metadata (and reference), enough for the checks that run before
    any graph is loaded."""
    directory = tmp_path / ("export" if with_reference else "bare")
    directory.mkdir()
    meta = {
        "format": "stablehlo",
        "graph": "model.stablehlo",
        "inputs": {"inputs": {"shape": ["batch", *SHAPE], "dtype": "float32"}},
        "outputs": ["logits", "probabilities"],
    }
    (directory / "metadata.json").write_text(json.dumps(meta))
    if with_reference:
        _synthetic_reference(np.random.default_rng(4)).save(str(directory))
    return str(directory)


def test_jaxdl_drift_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    export, bare = _fake_export(tmp_path), _fake_export(tmp_path, with_reference=False)
    np.save(tmp_path / "flat.npy", np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, *SHAPE), np.float32))
    np.save(tmp_path / "ok.npy", np.zeros((3, *SHAPE), np.float32))
    (tmp_path / "images.png").write_bytes(b"\x89PNG")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    cases = {
        "no reference": ([bare, "ok.npy"], "has no drift reference"),
        "wrong shape": ([export, "flat.npy"], "shape [3, 8, 8], the model takes [batch, 8, 8, 1]"),
        "empty": ([export, "empty.npy"], "the inputs hold no examples"),
        "no inputs": ([export], "no inputs"),
        "missing file": ([export, "nowhere.npy"], "input file not found"),
        "other file type": ([export, "images.png"], "inputs are .npy or .npz arrays"),
        "unreadable": ([export, "broken.npy"], "cannot read"),
    }
    for case, ((directory, *files), message) in cases.items():
        paths = [str(tmp_path / name) for name in files]
        code, _, err = _drift(capsys, "--export", directory, *paths)
        assert code == 2, (case, err)
        assert len(err.strip().splitlines()) == 1 and message in err, (case, err)
    code, _, err = _drift(capsys, "--export", export, "--split", "test")
    assert code == 2 and "--split needs --workdir" in err
    code, _, err = _drift(capsys, "--export", export, "--workdir", "w")
    assert code == 2 and len(err.strip().splitlines()) == 1  # argparse: not allowed together
