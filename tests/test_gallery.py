"""The misclassified gallery: exactly the wrong predictions, most confident first, as JSON for
every input family (with the text for text) and as a PNG grid for images."""

import json

import matplotlib.image as mpimg
import numpy as np
from scipy import special

from jaxdl.export.predictions import analyze_classification
from jaxdl.metrics import gallery
from jaxdl.metrics.gallery import (
    GALLERY_SIZE,
    misclassified_order,
    plot_misclassified,
    write_misclassified,
)

NAMES = ["cat", "dog", "eel"]


def _predictions(count=40, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(count, 3))
    return logits, special.softmax(logits, -1), rng.integers(0, 3, size=count)


def _is_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path).shape


def test_the_order_is_the_mistakes_by_descending_confidence():
    _, probs, labels = _predictions()
    order = misclassified_order(probs, labels)
    wrong = np.flatnonzero(probs.argmax(-1) != labels)
    assert sorted(order.tolist()) == wrong.tolist() and len(wrong) > 10
    np.testing.assert_array_equal(order, wrong[np.argsort(-probs.max(-1)[wrong])])
    tied = np.array([[0.2, 0.8], [0.2, 0.8], [0.9, 0.1]])
    assert misclassified_order(tied, np.array([0, 0, 1])).tolist() == [2, 0, 1]


def test_predict_analysis_writes_the_json_and_image_gallery(tmp_path):
    logits, probs, labels = _predictions(count=16)
    images = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype(np.float32)
    source = [{"inputs": x, "labels": y} for x, y in zip(images, labels, strict=True)]
    rows = [
        {"index": i, "label": int(labels[i]), "logits": logits[i], "probabilities": probs[i]}
        for i in range(16)
    ]
    rows[3] = {"index": 3, "error": "unreadable"}  # rows map to split indices, not positions
    analyze_classification(rows, NAMES, str(tmp_path), "test", source=source)

    saved = json.loads((tmp_path / "misclassified_test.json").read_text())
    kept = np.array([i for i in range(16) if i != 3])
    wrong = kept[probs[kept].argmax(-1) != labels[kept]]
    expected = wrong[np.argsort(-probs[wrong].max(-1), kind="stable")]
    assert [e["index"] for e in saved["examples"]] == expected.tolist() and len(expected) > 6
    assert saved["count"] == len(expected) and saved["split"] == "test"
    first = saved["examples"][0]
    assert first["true"] == labels[expected[0]] and first["true_name"] == NAMES[first["true"]]
    assert first["predicted"] == probs[expected[0]].argmax() != first["true"]
    assert first["confidence"] == probs[expected[0]].max()
    assert "text" not in first
    height, width, _ = _is_png(tmp_path / "misclassified_test.png")
    assert height > 300 and width > 1000  # two rows of six panels


def test_text_mistakes_carry_their_text_and_make_no_image(tmp_path):
    _, probs, labels = _predictions(count=12, seed=2)
    texts = [f"review number {i}" for i in range(12)]
    source = [{"tokens": np.arange(5), "labels": y} for y in labels]
    entries = write_misclassified(
        probs, labels, range(12), NAMES, str(tmp_path), "val", source=source, texts=texts
    )
    assert entries and all(e["text"] == texts[e["index"]] for e in entries)
    assert json.loads((tmp_path / "misclassified_val.json").read_text())["examples"] == entries
    assert not (tmp_path / "misclassified_val.png").exists()


def test_the_gallery_shows_the_first_gallery_size_mistakes(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(gallery, "plot_misclassified", lambda e, images, path: shown.extend(images))
    probs = np.tile([[0.1, 0.9]], (40, 1))
    probs[:, 1] -= np.arange(40) / 100  # confidence falls with the index
    probs[:, 0] = 1 - probs[:, 1]
    source = [{"inputs": np.full((2, 2, 1), i, np.float32)} for i in range(40)]
    write_misclassified(
        probs, np.zeros(40, int), range(40), ["a", "b"], str(tmp_path), "test", source=source
    )
    assert len(shown) == GALLERY_SIZE
    assert [int(image[0, 0, 0]) for image in shown] == list(range(GALLERY_SIZE))


def test_the_grid_plots_rgb_and_the_empty_case(tmp_path):
    entries = [{"true_name": "a", "predicted_name": "b", "confidence": 0.9}] * 2
    rgb = [np.random.default_rng(i).random((6, 6, 3)) for i in range(2)]
    assert _is_png(plot_misclassified(entries, rgb, tmp_path / "rgb.png"))[2] in (3, 4)
    assert _is_png(plot_misclassified([], [], tmp_path / "none.png"))[0] > 100
