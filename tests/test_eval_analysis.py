"""Tests for jaxdl.metrics.calibration and jaxdl.metrics.curves, each against an independent
reference: hand loops, constructed cases with known answers, scipy, scikit-learn and torch."""

import json
import math

import matplotlib.image
import numpy as np
import pytest
from scipy import special, stats
from sklearn import calibration as skcal
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from jaxdl.metrics import (
    apply_temperature,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    most_confused_pairs,
    mutual_information,
    one_vs_rest_curves,
    plot_per_class_metrics,
    plot_pr_curves,
    plot_reliability_diagram,
    plot_roc_curves,
    predictive_entropy,
    rejection_curve,
    reliability_bins,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random_probs(seed: int, size: int = 500, num_classes: int = 5, concentration: float = 0.5):
    """Dirichlet probabilities and labels drawn so accuracy is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(num_classes, concentration), size=size)
    labels = np.where(rng.random(size) < 0.6, probs.argmax(1), rng.integers(0, num_classes, size))
    return probs, labels


def _sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row drawn from that row's distribution (inverse CDF)."""
    cumulative = np.cumsum(probs, axis=1)
    draws = rng.random(probs.shape[0])[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=1), probs.shape[1] - 1)


def _hand_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Guo et al. 2017 ECE written as the plain loop over bins (m/M, (m+1)/M]."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for m in range(bins):
        low, high = m / bins, (m + 1) / bins
        in_bin = (confidence > low) & (confidence <= high)
        if m == 0:
            in_bin |= confidence == 0
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            total += in_bin.sum() / len(labels) * gap
    return total


def _assert_valid_png(path, min_bytes=5_000):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image.std() > 0.01  # not a blank canvas


# --------------------------------------------------------------------------- calibration error


@pytest.mark.parametrize("seed, bins", [(0, 15), (1, 10), (2, 1), (3, 37)])
def test_ece_equals_hand_loop(seed, bins):
    probs, labels = _random_probs(seed)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(
        _hand_ece(probs, labels, bins), abs=1e-12
    )


def test_ece_of_exactly_calibrated_bins_is_zero():
    # Bin (0.7, 0.8]: confidence 0.75, 3 of 4 right. Bin (0.5, 0.6]: confidence 0.6, 3 of 5 right.
    probs = np.array([[0.75, 0.25]] * 4 + [[0.4, 0.6]] * 5)
    labels = np.array([0, 0, 0, 1] + [1, 1, 1, 0, 0])
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_sampled_calibrated_model_is_near_zero():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=100_000)
    labels = _sample_labels(rng, probs)  # labels drawn from the predicted distribution
    assert expected_calibration_error(probs, labels) < 0.01


def test_ece_of_always_confident_and_wrong_is_about_one():
    probs = np.tile([0.999, 0.0005, 0.0005], (50, 1))
    labels = np.ones(50, int)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.999, abs=1e-9)


def test_reliability_bins_put_edge_confidences_in_the_lower_bin():
    probs = np.array([[0.5, 0.5], [0.0, 1.0], [0.3, 0.7]])
    table = reliability_bins(probs, np.array([0, 1, 0]), bins=2)
    # 0.5 lies in (0, 0.5]; 1.0 and 0.7 in (0.5, 1].
    np.testing.assert_array_equal(table.count, [1, 2])
    np.testing.assert_allclose(table.accuracy, [1.0, 0.5])
    np.testing.assert_allclose(table.confidence, [0.5, 0.85])
    json.dumps(table.to_dict(), allow_nan=False)


def test_reliability_bins_equal_sklearn_calibration_curve_in_the_binary_case():
    # With p(class 1) > 0.5 everywhere, the top label is class 1 and its confidence is p1, so the
    # top-label reliability bins are sklearn's positive-class calibration curve.
    rng = np.random.default_rng(1)
    positive = 0.5 + 0.5 * rng.random(2_000)
    positive = positive[positive > 0.5]
    probs = np.stack([1 - positive, positive], axis=1)
    labels = (rng.random(len(positive)) < positive**1.5).astype(int)
    table = reliability_bins(probs, labels, bins=12)
    prob_true, prob_pred = skcal.calibration_curve(labels, positive, n_bins=12, strategy="uniform")
    filled = table.count > 0
    np.testing.assert_allclose(table.accuracy[filled], prob_true, atol=1e-12)
    np.testing.assert_allclose(table.confidence[filled], prob_pred, atol=1e-12)


def test_reliability_bins_equal_calibration_curve_of_correctness_vs_confidence():
    probs, labels = _random_probs(4, num_classes=7)
    table = reliability_bins(probs, labels, bins=15)
    correct = (probs.argmax(1) == labels).astype(int)
    prob_true, prob_pred = skcal.calibration_curve(correct, probs.max(1), n_bins=15)
    filled = table.count > 0
    np.testing.assert_allclose(table.accuracy[filled], prob_true, atol=1e-12)
    np.testing.assert_allclose(table.confidence[filled], prob_pred, atol=1e-12)
    assert table.count.sum() == len(labels)


# --------------------------------------------------------------------------- temperature scaling


def _tempered_logits(seed: int, temperature: float, size: int = 20_000, num_classes: int = 10):
    """Logits, and labels drawn from softmax(logits / temperature): the NLL-optimal T is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(size, num_classes))
    return logits, _sample_labels(rng, special.softmax(logits / temperature, axis=1))


def _reference_nll(logits, labels, temperature):
    probs = special.softmax(logits / temperature, axis=1)
    return skm.log_loss(labels, probs, labels=np.arange(logits.shape[1]))


def test_fit_temperature_recovers_the_true_temperature():
    logits, labels = _tempered_logits(0, temperature=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, abs=0.1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fitted_temperature_never_increases_nll(true_temperature):
    logits, labels = _tempered_logits(1, true_temperature, size=2_000)
    temperature = fit_temperature(logits, labels)
    assert _reference_nll(logits, labels, temperature) <= _reference_nll(logits, labels, 1.0)
    # The minimum: nudging T either way does not help.
    for nudged in (temperature * 0.99, temperature * 1.01):
        assert _reference_nll(logits, labels, temperature) <= _reference_nll(logits, labels, nudged)


def test_fitted_temperature_on_separable_logits_stays_finite():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    temperature = fit_temperature(logits, labels)
    assert 0 < temperature < 1
    assert _reference_nll(logits, labels, temperature) <= _reference_nll(logits, labels, 1.0)


def test_fit_temperature_equals_torch_lbfgs():
    torch = pytest.importorskip("torch")
    logits, labels = _tempered_logits(2, temperature=1.7, size=3_000)
    logits_t = torch.tensor(logits, dtype=torch.float64)
    labels_t = torch.tensor(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    torch_temperature = float(log_t.detach().exp())
    assert fit_temperature(logits, labels) == pytest.approx(torch_temperature, abs=1e-3)


def test_apply_temperature_softens_but_keeps_predictions():
    logits, _ = _tempered_logits(3, 1.0, size=50)
    soft = apply_temperature(logits, 3.0)
    np.testing.assert_allclose(soft, special.softmax(logits / 3.0, axis=1), atol=1e-12)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(soft.argmax(1), logits.argmax(1))
    assert np.all(soft.max(1) <= special.softmax(logits, axis=1).max(1))


# --------------------------------------------------------------------------- uncertainty


def test_predictive_entropy_equals_scipy():
    probs, _ = _random_probs(5, size=50)
    probs[0] = [1, 0, 0, 0, 0]  # 0 log 0 = 0
    probs[1] = [0.5, 0.5, 0, 0, 0]
    np.testing.assert_allclose(predictive_entropy(probs), stats.entropy(probs, axis=1), atol=1e-12)
    assert predictive_entropy(probs)[0] == 0.0
    members = np.stack([probs, probs[::-1]])
    np.testing.assert_allclose(
        predictive_entropy(members), stats.entropy(members, axis=-1), atol=1e-12
    )


def test_mutual_information_equals_reference_and_known_cases():
    rng = np.random.default_rng(6)
    members = rng.dirichlet(np.ones(4), size=(8, 30))  # [M, N, C]
    reference = stats.entropy(members.mean(0), axis=-1) - stats.entropy(members, axis=-1).mean(0)
    np.testing.assert_allclose(mutual_information(members), reference, atol=1e-12)
    # Identical members: no disagreement. Two confident members that disagree: log 2.
    np.testing.assert_allclose(mutual_information(np.stack([members[0]] * 3)), 0.0, atol=1e-12)
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(mutual_information(disagree), [math.log(2)], atol=1e-12)


def test_rejection_curve_at_zero_is_accuracy():
    probs, labels = _random_probs(7)
    curve = rejection_curve(probs, labels, fractions=[0.0, 0.5])
    assert curve.accuracy[0] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    assert curve.num_kept.tolist() == [500, 250]
    json.dumps(curve.to_dict(), allow_nan=False)


def test_rejection_curve_on_a_constructed_case():
    # Confidence falls (entropy rises) with the index; the 3 least confident are wrong.
    confidence = np.linspace(0.95, 0.55, 10)
    probs = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.array([0] * 7 + [1] * 3)
    fractions = [0.0, 0.1, 0.2, 0.3, 0.5, 0.9]
    curve = rejection_curve(probs, labels, fractions)
    np.testing.assert_allclose(curve.accuracy, [0.7, 7 / 9, 7 / 8, 1, 1, 1])
    assert np.all(np.diff(curve.accuracy) >= 0)
    assert curve.num_kept.tolist() == [10, 9, 8, 7, 5, 1]


def test_rejection_curve_breaks_ties_by_index_and_floors_exactly():
    probs = np.full((2, 2), 0.5) + [[0.1, -0.1]]  # identical rows, identical entropy
    assert rejection_curve(probs, [1, 0], [0.5]).accuracy.tolist() == [1.0]  # index 0 rejected
    assert rejection_curve(probs, [0, 1], [0.5]).accuracy.tolist() == [0.0]
    probs, labels = _random_probs(8, size=100)
    assert rejection_curve(probs, labels, [0.29]).num_kept.tolist() == [71]


# --------------------------------------------------------------------------- curves


def test_one_vs_rest_curves_equal_sklearn():
    probs, labels = _random_probs(9, num_classes=4)
    names = ["cat", "dog", "fox", "owl"]
    curves = one_vs_rest_curves(probs, labels, names)
    json.dumps(curves, allow_nan=False)
    for k, name in enumerate(names):
        entry = curves["per_class"][name]
        positive = labels == k
        assert entry["support"] == positive.sum()
        fpr, tpr, thresholds = skm.roc_curve(positive, probs[:, k])
        np.testing.assert_array_equal(entry["roc"]["fpr"], fpr)
        np.testing.assert_array_equal(entry["roc"]["tpr"], tpr)
        ours = [np.inf if t is None else t for t in entry["roc"]["thresholds"]]
        np.testing.assert_array_equal(ours, thresholds)
        assert entry["roc"]["auc"] == skm.roc_auc_score(positive, probs[:, k])
        precision, recall, thresholds = skm.precision_recall_curve(
            positive, probs[:, k], drop_intermediate=True
        )
        np.testing.assert_array_equal(entry["pr"]["precision"], precision)
        np.testing.assert_array_equal(entry["pr"]["recall"], recall)
        np.testing.assert_array_equal(entry["pr"]["thresholds"], thresholds)
        assert entry["pr"]["average_precision"] == skm.average_precision_score(
            positive, probs[:, k]
        )
    assert curves["macro_roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert curves["macro_average_precision"] == pytest.approx(
        skm.average_precision_score(label_binarize(labels, classes=range(4)), probs), abs=1e-12
    )


def test_one_vs_rest_curves_keep_all_points_when_asked():
    probs, labels = _random_probs(10, size=200, num_classes=3)
    entry = one_vs_rest_curves(probs, labels, drop_intermediate=False)["per_class"]["1"]
    fpr, _, _ = skm.roc_curve(labels == 1, probs[:, 1], drop_intermediate=False)
    np.testing.assert_array_equal(entry["roc"]["fpr"], fpr)


def test_one_vs_rest_curves_skip_a_class_without_positives():
    probs, labels = _random_probs(11, num_classes=4)
    labels[labels == 3] = 0
    curves = one_vs_rest_curves(probs, labels)
    assert curves["per_class"]["3"] == {"support": 0, "roc": None, "pr": None}
    mean_auc = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in range(3)])
    assert curves["macro_roc_auc"] == pytest.approx(mean_auc, abs=1e-12)
    json.dumps(curves, allow_nan=False)


def test_most_confused_pairs_on_a_constructed_matrix():
    cm = np.array(
        [
            [50, 3, 7, 0],
            [7, 40, 0, 1],
            [2, 9, 30, 7],
            [0, 0, 0, 10],
        ]
    )
    names = ["a", "b", "c", "d"]
    pairs = most_confused_pairs(cm, names, top=4)
    # Three pairs tie at 7: (a, c), (b, a), (c, d) in row-major order.
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "b", 9),
        ("a", "c", 7),
        ("b", "a", 7),
        ("c", "d", 7),
    ]
    assert pairs[0]["fraction_of_true"] == pytest.approx(9 / 48)
    everything = most_confused_pairs(cm, names, top=None)
    assert len(everything) == 7  # the non-zero off-diagonal entries
    assert [p["count"] for p in everything] == [9, 7, 7, 7, 3, 2, 1]
    assert most_confused_pairs(cm, names, top=0) == []
    assert most_confused_pairs(np.eye(3, dtype=int)) == []
    assert most_confused_pairs([[0, 2], [1, 0]])[0]["true"] == "0"
    json.dumps(pairs, allow_nan=False)


# --------------------------------------------------------------------------- plots


def test_plots_write_valid_pngs(tmp_path):
    probs, labels = _random_probs(12, num_classes=4)
    curves = one_vs_rest_curves(probs, labels, ["w", "x", "y", "z"])
    cm = skm.confusion_matrix(labels, probs.argmax(1), labels=range(4))
    written = [
        plot_reliability_diagram(probs, labels, tmp_path / "a" / "reliability.png"),
        plot_roc_curves(curves, tmp_path / "roc.png"),
        plot_pr_curves(curves, tmp_path / "pr.png"),
        plot_per_class_metrics(classification_report(cm), tmp_path / "per_class.png"),
    ]
    for path in written:
        _assert_valid_png(path)


def test_curve_plots_draw_only_the_worst_classes_when_there_are_many(tmp_path):
    probs, labels = _random_probs(13, size=600, num_classes=25)
    curves = one_vs_rest_curves(probs, labels)
    _assert_valid_png(plot_roc_curves(curves, tmp_path / "roc.png"))


# --------------------------------------------------------------------------- bad input

GOOD_PROBS = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
GOOD_LABELS = np.array([0, 1, 1])

BAD_INPUTS = [
    ("sums", lambda: expected_calibration_error([[0.7, 0.7], [0.2, 0.8]], [0, 1]), "sum to 1"),
    ("logits", lambda: reliability_bins([[2.0, -1.0]], [0]), "negative"),
    ("nan", lambda: predictive_entropy([[np.nan, 1.0]]), "NaN"),
    ("label high", lambda: expected_calibration_error(GOOD_PROBS, [0, 1, 2]), "out of range"),
    ("label neg", lambda: rejection_curve(GOOD_PROBS, [0, -1, 1]), "out of range"),
    ("label frac", lambda: reliability_bins(GOOD_PROBS, [0.0, 0.5, 1.0]), "whole-number"),
    ("label str", lambda: reliability_bins(GOOD_PROBS, ["a", "b", "c"]), "integer class ids"),
    ("empty probs", lambda: expected_calibration_error(np.zeros((0, 3)), []), "empty"),
    ("empty logits", lambda: fit_temperature(np.zeros((0, 3)), []), "empty"),
    (
        "lengths ece",
        lambda: expected_calibration_error(GOOD_PROBS, [0, 1]),
        "2 entries but probs has 3",
    ),
    ("lengths curves", lambda: one_vs_rest_curves(GOOD_PROBS, [0, 1, 1, 0]), "4 entries but probs"),
    ("lengths T", lambda: fit_temperature(np.zeros((4, 3)), [0, 1]), "2 entries but logits"),
    ("1-d probs", lambda: reliability_bins([0.2, 0.8], [1, 0]), r"\[N, C\]"),
    ("members", lambda: mutual_information(GOOD_PROBS), r"\[M, N, C\]"),
    ("bins", lambda: reliability_bins(GOOD_PROBS, GOOD_LABELS, bins=0), "bins"),
    ("temperature", lambda: apply_temperature([[1.0, 2.0]], 0.0), "temperature"),
    ("fraction", lambda: rejection_curve(GOOD_PROBS, GOOD_LABELS, [0.0, 1.0]), r"\[0, 1\)"),
    ("names", lambda: one_vs_rest_curves(GOOD_PROBS, GOOD_LABELS, ["x"]), "class_names"),
    ("top", lambda: most_confused_pairs(np.eye(2, dtype=int), top=-1), "top"),
    ("cm", lambda: most_confused_pairs([[1, 2, 3]]), "square"),
    ("report", lambda: plot_per_class_metrics({"accuracy": 1.0}, "x.png"), "per_class"),
    ("curves", lambda: plot_roc_curves({"roc": []}, "x.png"), "one_vs_rest_curves"),
]


@pytest.mark.parametrize(
    "call, match", [(c, m) for _, c, m in BAD_INPUTS], ids=[name for name, _, _ in BAD_INPUTS]
)
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
