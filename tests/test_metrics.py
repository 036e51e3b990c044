"""Tests for jaxdl.metrics.classification: on-device counts and scores equal scikit-learn's."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxdl.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    precision_recall_f1,
)

NUM_CLASSES = 7
NEVER_PREDICTED = 5  # present in labels, never predicted
NEVER_PRESENT = 6  # predicted, never a true label
ABSENT_EVERYWHERE = 4  # neither present nor predicted
ALL_LABELS = np.arange(NUM_CLASSES)


def _random_labels_and_predictions(seed: int, size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Random labels/predictions with one never-predicted, never-present and absent class each."""
    rng = np.random.default_rng(seed)
    label_pool = [c for c in range(NUM_CLASSES) if c not in (NEVER_PRESENT, ABSENT_EVERYWHERE)]
    pred_pool = [c for c in range(NUM_CLASSES) if c not in (NEVER_PREDICTED, ABSENT_EVERYWHERE)]
    labels = rng.choice(label_pool, size=size)
    predictions = rng.choice(pred_pool, size=size)
    # Make a good share correct so scores are not all near zero.
    agree = rng.random(size) < 0.4
    predictions = np.where(agree & (labels != NEVER_PREDICTED), labels, predictions)
    return labels, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_equals_sklearn(seed):
    labels, predictions = _random_labels_and_predictions(seed)
    cm = confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), NUM_CLASSES)
    assert cm.dtype == jnp.int32
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES)
    expected = skm.confusion_matrix(labels, predictions, labels=ALL_LABELS)
    np.testing.assert_array_equal(np.asarray(cm), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_precision_recall_f1_equal_sklearn_for_every_average(seed, average):
    labels, predictions = _random_labels_and_predictions(seed)
    cm = confusion_matrix(labels, predictions, NUM_CLASSES)
    got = precision_recall_f1(cm, average)
    expected = skm.precision_recall_fscore_support(
        labels, predictions, labels=ALL_LABELS, average=average, zero_division=0
    )[:3]
    for got_score, expected_score in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_score, expected_score, rtol=1e-12, atol=1e-12)
    if average is not None:
        assert all(isinstance(score, float) for score in got)


def test_scores_of_never_predicted_and_never_present_classes_are_zero():
    labels, predictions = _random_labels_and_predictions(0)
    precision, recall, f1 = precision_recall_f1(
        confusion_matrix(labels, predictions, NUM_CLASSES), None
    )
    for absent in (NEVER_PREDICTED, NEVER_PRESENT, ABSENT_EVERYWHERE):
        assert f1[absent] == 0.0
    assert precision[NEVER_PREDICTED] == 0.0 and recall[NEVER_PRESENT] == 0.0
    assert np.all(np.isfinite(precision)) and np.all(np.isfinite(recall))


@pytest.mark.parametrize("seed", [0, 3])
def test_classification_report_matches_sklearn_and_is_json_serialisable(seed):
    labels, predictions = _random_labels_and_predictions(seed)
    names = [f"class_{c}" for c in range(NUM_CLASSES)]
    report = classification_report(confusion_matrix(labels, predictions, NUM_CLASSES), names)

    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels, predictions, labels=ALL_LABELS, average=average, zero_division=0
        )
        assert report[f"precision_{average}"] == pytest.approx(precision, abs=1e-12)
        assert report[f"recall_{average}"] == pytest.approx(recall, abs=1e-12)
        assert report[f"f1_{average}"] == pytest.approx(f1, abs=1e-12)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=ALL_LABELS, average=None, zero_division=0
    )
    assert list(report["per_class"]) == names
    for i, name in enumerate(names):
        entry = report["per_class"][name]
        assert entry == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )
        assert type(entry["support"]) is int and type(entry["f1"]) is float
    assert (
        report["confusion_matrix"]
        == skm.confusion_matrix(labels, predictions, labels=ALL_LABELS).tolist()
    )
    assert json.loads(json.dumps(report)) == report


def test_mask_excludes_padded_entries():
    labels, predictions = _random_labels_and_predictions(4, size=100)
    rng = np.random.default_rng(4)
    # Padding with in-range garbage ids: only the mask can keep them out.
    padded_labels = np.concatenate([labels, rng.integers(0, NUM_CLASSES, 28)])
    padded_predictions = np.concatenate([predictions, rng.integers(0, NUM_CLASSES, 28)])
    mask = np.arange(128) < 100

    cm = confusion_matrix(padded_labels, padded_predictions, NUM_CLASSES, mask=mask)
    np.testing.assert_array_equal(
        np.asarray(cm), skm.confusion_matrix(labels, predictions, labels=ALL_LABELS)
    )
    unmasked = confusion_matrix(padded_labels, padded_predictions, NUM_CLASSES)
    assert int(unmasked.sum()) == 128 and int(cm.sum()) == 100
    assert float(accuracy(padded_predictions, padded_labels, mask=mask)) == pytest.approx(
        skm.accuracy_score(labels, predictions), abs=1e-6
    )


def test_out_of_range_ids_are_not_counted():
    labels = jnp.array([0, 1, -1, 2, 3])
    predictions = jnp.array([0, 2, 1, 7, 1])
    cm = confusion_matrix(labels, predictions, num_classes=3)
    expected = np.zeros((3, 3), np.int32)
    expected[0, 0] = expected[1, 2] = 1
    np.testing.assert_array_equal(np.asarray(cm), expected)


def test_confusion_matrix_and_accuracy_work_under_jit_and_sum_across_batches():
    labels, predictions = _random_labels_and_predictions(5, size=256)
    logits = jax.nn.one_hot(predictions, NUM_CLASSES) + 0.01 * jax.random.normal(
        jax.random.key(0), (256, NUM_CLASSES)
    )

    @jax.jit
    def eval_step(batch_logits, batch_labels, batch_mask):
        batch_predictions = jnp.argmax(batch_logits, axis=-1)
        return (
            confusion_matrix(batch_labels, batch_predictions, NUM_CLASSES, mask=batch_mask),
            accuracy(batch_logits, batch_labels, mask=batch_mask),
        )

    mask = np.ones(64, bool)
    total = sum(
        eval_step(logits[i : i + 64], labels[i : i + 64], mask)[0] for i in range(0, 256, 64)
    )
    np.testing.assert_array_equal(
        np.asarray(total), skm.confusion_matrix(labels, predictions, labels=ALL_LABELS)
    )
    _, batch_accuracy = eval_step(logits[:64], labels[:64], mask)
    assert float(batch_accuracy) == pytest.approx(
        skm.accuracy_score(labels[:64], predictions[:64]), abs=1e-6
    )
    jitted_cm = jax.jit(partial(confusion_matrix, num_classes=NUM_CLASSES))
    np.testing.assert_array_equal(
        np.asarray(jitted_cm(labels, predictions)),
        skm.confusion_matrix(labels, predictions, labels=ALL_LABELS),
    )


def test_confusion_matrix_handles_non_flat_inputs():
    labels, predictions = _random_labels_and_predictions(6, size=120)
    cm = confusion_matrix(labels.reshape(4, 30), predictions.reshape(4, 30), NUM_CLASSES)
    np.testing.assert_array_equal(
        np.asarray(cm), skm.confusion_matrix(labels, predictions, labels=ALL_LABELS)
    )


def test_accuracy_with_no_valid_entries_is_zero_not_nan():
    logits = jnp.ones((4, 3))
    assert float(accuracy(logits, jnp.zeros(4, jnp.int32), mask=jnp.zeros(4, bool))) == 0.0


def test_scores_of_an_empty_confusion_matrix_are_zero():
    empty = np.zeros((3, 3), np.int32)
    for average in ("macro", "micro", "weighted"):
        assert precision_recall_f1(empty, average) == (0.0, 0.0, 0.0)
    report = classification_report(empty)
    assert report["accuracy"] == 0.0 and list(report["per_class"]) == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: confusion_matrix(jnp.zeros(3, int), jnp.zeros(4, int), 2), "shape"),
        (lambda: confusion_matrix(jnp.zeros(3, int), jnp.zeros(3, int), 0), "num_classes"),
        (lambda: confusion_matrix(jnp.zeros(3, int), jnp.zeros(3, int), 2, jnp.ones(2)), "mask"),
        (lambda: accuracy(jnp.zeros((3, 2, 5)), jnp.zeros(4, int)), "shape"),
        (lambda: precision_recall_f1(np.ones((2, 3), int), "macro"), "square"),
        (lambda: precision_recall_f1(np.ones((2, 2), int), "binary"), "average"),
        (lambda: precision_recall_f1(-np.ones((2, 2), int), "macro"), "negative"),
        (lambda: precision_recall_f1(np.full((2, 2), 0.5), "macro"), "whole-number"),
        (lambda: classification_report(np.ones((2, 2), int), ["a"]), "class_names"),
        (lambda: classification_report(np.ones((2, 2), int), ["a", "a"]), "unique"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_confident_learning_recovers_a_known_label_noise_rate():
    """Labels flipped at random (12% of them) under a calibrated-ish classifier: the estimate
    is near 12% and the flagged examples are mostly the flipped ones."""
    from jaxdl.metrics import confident_joint, estimate_label_noise

    rng = np.random.default_rng(0)
    n, k = 6000, 3
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flipped = rng.random(n) < 0.12
    labels = np.where(flipped, (truth + rng.integers(1, k, n)) % k, truth)
    estimate = estimate_label_noise(labels, probs)
    assert abs(estimate.noise_rate - flipped.mean()) < 0.03
    assert estimate.joint.shape == (k, k) and abs(estimate.joint.sum() - 1) < 1e-9
    precision = flipped[estimate.issues].mean()
    recall = np.isin(np.flatnonzero(flipped), estimate.issues).mean()
    assert precision > 0.8 and recall > 0.6
    # Least self-confident first.
    self_confidence = probs[estimate.issues, labels[estimate.issues]]
    assert (np.diff(self_confidence) >= 0).all()
    # Clean labels: (almost) nothing flagged.
    assert estimate_label_noise(truth, probs).noise_rate < flipped.mean() / 3
    counts, confident = confident_joint(truth, probs)
    assert counts.sum() == (confident >= 0).sum()
