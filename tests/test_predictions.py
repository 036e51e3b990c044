"""``jaxdl predict``'s pieces: rows in input order, unreadable records kept as error rows, CSV and
JSONL output, and the analysis written from them."""

import csv
import json

import jax
import numpy as np
import pytest

from jaxdl.data.records import RecordError
from jaxdl.errors import UserError
from jaxdl.export import inference_function
from jaxdl.export.predictions import analyze_classification, classify_records, write_predictions
from jaxdl.models import get_model
from jaxdl.tasks.classification import ImageClassification


class _Source:
    """Records of images and labels; the indices in ``broken`` cannot be read."""

    def __init__(self, images, labels, broken=()):
        self.images, self.labels, self.broken = images, labels, set(broken)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        if index in self.broken:
            raise RecordError(f"record {index}: corrupt image\nsecond line")
        return {"inputs": self.images[index], "labels": self.labels[index]}


@pytest.fixture(scope="module")
def inference():
    task = ImageClassification(input_shape=(8, 8, 1), num_classes=3)
    model = get_model("lenet5", num_classes=3, padding="SAME")
    args, kwargs = task.init_inputs(1)
    variables = model.init(jax.random.key(0), *args, train=False, **kwargs)
    return inference_function(task, model, variables)


def _data(count=11, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, 8, 8, 1)).astype(np.float32)
    return images, rng.integers(0, 3, size=count).astype(np.int32)


def test_rows_follow_the_input_order_and_equal_one_big_batch(inference):
    images, labels = _data()
    rows = list(classify_records(inference, _Source(images, labels), batch_size=4))
    assert [r["index"] for r in rows] == list(range(11))
    assert [r["label"] for r in rows] == labels.tolist()
    expected = inference({"inputs": images})["probabilities"]
    np.testing.assert_allclose(np.stack([r["probabilities"] for r in rows]), expected, atol=1e-6)


def test_an_unreadable_record_becomes_an_error_row_in_place(inference):
    images, labels = _data()
    rows = list(classify_records(inference, _Source(images, labels, broken={0, 5}), 4))
    assert [r["index"] for r in rows] == list(range(11))
    assert rows[0]["error"] == rows[0]["error"].splitlines()[0] == "record 0: corrupt image"
    assert "error" in rows[5] and "probabilities" not in rows[5]
    expected = inference({"inputs": images})["probabilities"]
    np.testing.assert_allclose(rows[6]["probabilities"], expected[6], atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predictions_files_hold_one_row_per_input_with_probabilities(tmp_path, inference, suffix):
    images, labels = _data()
    rows = list(classify_records(inference, _Source(images, labels, broken={3}), 4))
    path = str(tmp_path / f"out{suffix}")
    write_predictions(rows, path, ["a", "b", "c"])
    if suffix == ".csv":
        with open(path) as handle:
            table = list(csv.DictReader(handle))
    else:
        with open(path) as handle:
            table = [json.loads(line) for line in handle]
    assert len(table) == 11 and str(table[3]["error"]).startswith("record 3")
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]  # no partial file left
    good = table[4]
    probs = np.asarray([float(good[f"p_{n}"]) for n in "abc"])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert int(good["prediction"]) == int(np.argmax(probs))
    assert good["predicted_class"] == "abc"[int(np.argmax(probs))]
    with pytest.raises(UserError, match="must end in one of"):
        write_predictions(rows, str(tmp_path / "out.txt"), None)


def test_analysis_counts_readable_examples_and_writes_plots(tmp_path, inference):
    images, labels = _data(30)
    rows = list(classify_records(inference, _Source(images, labels, broken={7}), 8))
    analysis = analyze_classification(rows, None, str(tmp_path), "test")
    assert analysis["examples"] == 29 and analysis["unreadable"] == 1
    predictions = np.asarray([np.argmax(r["probabilities"]) for r in rows if "error" not in r])
    truth = np.delete(labels, 7)
    assert analysis["accuracy"] == pytest.approx(np.mean(predictions == truth))
    assert 0 < analysis["temperature"] < 100 and 0 <= analysis["ece"] <= 1
    for name in ("reliability", "roc", "precision_recall", "per_class"):
        assert (tmp_path / f"{name}_test.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "analysis_test.json").read_text())
    assert saved["examples"] == 29
