"""Class-imbalance remedies: weighted and focal losses (against torch), balanced class weights
(against scikit-learn), train-split imbalance and oversampling views, SMOTE (against
imbalanced-learn, training folds only), config errors."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from imblearn.over_sampling import SMOTE
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.class_weight import compute_class_weight

from jaxdl import config_sections
from jaxdl.config import load_config
from jaxdl.data.folds import cross_validation_fold
from jaxdl.data.imbalance import (
    apply_train_options,
    balanced_repeat_indices,
    imbalance_indices,
    in_memory_arrays,
    smote,
)
from jaxdl.data.loading import load_data
from jaxdl.data.pipeline import make_train_loader
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data.views import SubsetSource
from jaxdl.errors import ConfigError
from jaxdl.tasks.classification import ImageClassification, classification_loss
from jaxdl.tasks.registry import build_task

EXPERIMENT = str(Path(__file__).parents[1] / "experiments" / "digits_imbalanced.py")
NUM_CLASSES = 5
WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0, 0.25], np.float32)


def _logits_and_labels(batch: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (3 * rng.normal(size=(batch, NUM_CLASSES))).astype(np.float32)
    return logits, rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


def _task_loss(task: ImageClassification, logits: np.ndarray, labels: np.ndarray) -> float:
    """``task.loss`` of a batch whose model output is ``logits``."""
    batch = {"inputs": jnp.zeros((len(labels), 1)), "labels": jnp.asarray(labels)}
    loss, _ = task.loss(lambda inputs: jnp.asarray(logits), batch)
    return float(loss)


def _torch_focal(logits, labels, gamma, weights=None, smoothing=0.0):
    """Softmax focal loss written out in torch: ``sum_c q_c w_c (1 - p_c)^gamma (-log p_c)``
    summed over the batch and divided by ``sum_i w[y_i]`` (the mean without weights)."""
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    q = (
        F.one_hot(labels, logits.shape[-1]).double() * (1 - smoothing)
        + smoothing / logits.shape[-1]
    )
    w = torch.ones(logits.shape[-1], dtype=logits.dtype) if weights is None else weights
    per_example = (q * w * (1 - p) ** gamma * -log_p).sum(-1)
    return per_example.sum() / w[labels].sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_weighted_cross_entropy_matches_torch(smoothing):
    logits, labels = _logits_and_labels()
    task = ImageClassification((1,), NUM_CLASSES, label_smoothing=smoothing, class_weights=WEIGHTS)
    expected = F.cross_entropy(
        torch.tensor(logits),
        torch.tensor(labels, dtype=torch.long),
        weight=torch.tensor(WEIGHTS),
        label_smoothing=smoothing,
    )
    assert _task_loss(task, logits, labels) == pytest.approx(float(expected), rel=1e-5)


def test_unweighted_loss_is_torch_mean_cross_entropy():
    logits, labels = _logits_and_labels()
    task = ImageClassification((1,), NUM_CLASSES, label_smoothing=0.1)
    expected = F.cross_entropy(
        torch.tensor(logits), torch.tensor(labels, dtype=torch.long), label_smoothing=0.1
    )
    assert _task_loss(task, logits, labels) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    ("gamma", "weights", "smoothing"),
    [(2.0, None, 0.0), (0.5, None, 0.0), (2.0, WEIGHTS, 0.0), (1.0, WEIGHTS, 0.2)],
)
def test_focal_loss_and_gradient_match_hand_written_torch(gamma, weights, smoothing):
    logits, labels = _logits_and_labels()
    task = ImageClassification(
        (1,), NUM_CLASSES, label_smoothing=smoothing, class_weights=weights, focal_gamma=gamma
    )
    torch_logits = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    torch_weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    expected = _torch_focal(
        torch_logits, torch.tensor(labels, dtype=torch.long), gamma, torch_weights, smoothing
    )
    expected.backward()
    assert _task_loss(task, logits, labels) == pytest.approx(expected.item(), rel=1e-5)
    grad = jax.grad(lambda x: _task_loss_traced(task, x, labels))(jnp.asarray(logits))
    np.testing.assert_allclose(grad, torch_logits.grad.numpy(), rtol=1e-4, atol=1e-6)


def _task_loss_traced(task, logits, labels):
    batch = {"inputs": jnp.zeros((len(labels), 1)), "labels": jnp.asarray(labels)}
    return task.loss(lambda inputs: logits, batch)[0]


def test_focal_gamma_zero_is_cross_entropy():
    logits, labels = _logits_and_labels()
    for weights in (None, WEIGHTS):
        plain = classification_loss(logits, labels, 0.1, class_weights=weights)
        focal = classification_loss(logits, labels, 0.1, class_weights=weights, focal_gamma=0.0)
        np.testing.assert_array_equal(plain, focal)
        tiny = classification_loss(logits, labels, 0.1, class_weights=weights, focal_gamma=1e-9)
        np.testing.assert_allclose(plain, tiny, rtol=1e-6)


def test_focal_loss_has_finite_gradient_at_certain_predictions():
    logits = jnp.array([[60.0, 0.0, 0.0]])  # p_y rounds to 1 in float32
    grad = jax.grad(lambda x: classification_loss(x, jnp.array([0]), focal_gamma=0.5).sum())(logits)
    assert np.all(np.isfinite(grad))


def test_evaluation_loss_stays_unweighted():
    logits, labels = _logits_and_labels()
    task = ImageClassification((1,), NUM_CLASSES, class_weights=WEIGHTS, focal_gamma=2.0)
    batch = {
        "inputs": jnp.zeros((len(labels), 1)),
        "labels": jnp.asarray(labels),
        "mask": jnp.ones(len(labels)),
    }
    sums = task.eval_sums(lambda inputs: jnp.asarray(logits), batch)
    plain = F.cross_entropy(torch.tensor(logits), torch.tensor(labels, dtype=torch.long))
    assert float(sums["loss_sum"]) / len(labels) == pytest.approx(float(plain), rel=1e-5)


def test_loss_weight_is_the_sum_of_target_weights():
    _, labels = _logits_and_labels()
    weighted = ImageClassification((1,), NUM_CLASSES, class_weights=WEIGHTS)
    plain = ImageClassification((1,), NUM_CLASSES)
    batch = {"inputs": jnp.zeros((len(labels), 1)), "labels": jnp.asarray(labels)}
    assert float(weighted.loss_weight(batch)) == pytest.approx(float(WEIGHTS[labels].sum()))
    assert float(plain.loss_weight(batch)) == len(labels)


# --- the task builders ----------------------------------------------------------------------


IMBALANCED = np.repeat(np.arange(4), [40, 10, 5, 25]).astype(np.int32)


def _splits(labels: np.ndarray = IMBALANCED) -> DataSplits:
    def source(y):
        return ArraySource(inputs=np.zeros((len(y), 2, 2, 1), np.float32), labels=y)

    names = [str(c) for c in range(int(labels.max()) + 1)]
    balanced = np.arange(len(names), dtype=np.int32)
    info = {"class_names": names, "num_classes": len(names)}
    return DataSplits(source(labels), source(balanced), source(balanced), info=info)


def _build(**task) -> ImageClassification:
    config = ml_collections.ConfigDict({"task": {"name": "image_classification", **task}})
    return build_task(config, _splits())


def test_balanced_class_weights_equal_sklearn():
    task = _build(class_weights="balanced")
    classes = np.arange(4)
    expected = compute_class_weight("balanced", classes=classes, y=IMBALANCED)
    np.testing.assert_allclose(task.class_weights, expected, rtol=1e-6)
    assert task.focal_gamma == 0.0


def test_explicit_class_weights_and_gamma_reach_the_task():
    task = _build(class_weights=[1.0, 2.0, 3.0, 4.0], focal_gamma=2)
    np.testing.assert_array_equal(task.class_weights, [1, 2, 3, 4])
    assert task.focal_gamma == 2.0
    assert _build().class_weights is None and _build(class_weights=None).class_weights is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"class_weights": "balance"}, "task.class_weights must be 'balanced'"),
        ({"class_weights": [1.0, 2.0]}, "one weight per class (4)"),
        ({"class_weights": [1.0, -2.0, 1.0, 1.0]}, ">= 0"),
        ({"focal_gamma": -1.0}, "focal_gamma must be a finite number >= 0"),
        ({"focal_gamma": "two"}, "task.focal_gamma must be a number"),
    ],
)
def test_task_config_errors_are_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        _build(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


# --- train-split views ------------------------------------------------------------------------


def _data_config(**options) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": "digits", "split_seed": 3, **options})


def test_balanced_repeat_indices_repeat_minority_examples_evenly():
    indices = balanced_repeat_indices(IMBALANCED, seed=0)
    np.testing.assert_array_equal(np.bincount(IMBALANCED[indices]), [40, 40, 40, 40])
    copies = np.bincount(indices, minlength=len(IMBALANCED))
    for cls in range(4):
        per_example = copies[cls == IMBALANCED]
        assert per_example.min() >= 1 and per_example.max() - per_example.min() <= 1
    np.testing.assert_array_equal(indices, balanced_repeat_indices(IMBALANCED, seed=0))
    assert not np.array_equal(indices, balanced_repeat_indices(IMBALANCED, seed=1))


def test_oversampled_loader_draws_classes_equally_per_epoch_deterministically():
    splits = apply_train_options(_splits(), _data_config(oversample="balanced"))
    train = splits.train
    assert len(train) == 160  # 4 classes x the largest (40)

    def epoch_labels(seed):
        loader = iter(make_train_loader(train, batch_size=16, seed=seed, spec={"labels": np.int32}))
        return np.concatenate([next(loader)["labels"] for _ in range(len(train) // 16)])

    first = epoch_labels(seed=0)
    np.testing.assert_array_equal(np.bincount(first), [40, 40, 40, 40])
    np.testing.assert_array_equal(first, epoch_labels(seed=0))
    assert not np.array_equal(first, epoch_labels(seed=1))


def test_oversampled_loader_resumes_exactly_mid_epoch():
    train = apply_train_options(_splits(), _data_config(oversample="balanced")).train
    spec = {"inputs": np.float32, "labels": np.int32}
    loader = iter(make_train_loader(train, batch_size=16, seed=4, spec=spec))
    for _ in range(3):
        next(loader)
    state = loader.get_state()
    expected = [next(loader)["labels"] for _ in range(12)]  # runs into the next epoch
    fresh = apply_train_options(_splits(), _data_config(oversample="balanced")).train
    resumed = iter(make_train_loader(fresh, batch_size=16, seed=4, spec=spec))
    resumed.set_state(state)
    for labels in expected:
        np.testing.assert_array_equal(next(resumed)["labels"], labels)


def test_imbalance_indices_are_seeded_and_keep_the_fractions():
    labels = np.repeat(np.arange(3), 100)
    kept = imbalance_indices(labels, [1.0, 0.5, 0.1], seed=0)
    np.testing.assert_array_equal(np.bincount(labels[kept]), [100, 50, 10])
    np.testing.assert_array_equal(kept, imbalance_indices(labels, [1.0, 0.5, 0.1], seed=0))
    assert not np.array_equal(kept, imbalance_indices(labels, [1.0, 0.5, 0.1], seed=1))


def test_digits_imbalanced_experiment_touches_the_train_split_only():
    config = load_config(EXPERIMENT)
    plain = load_data(_data_config())
    data = load_data(config.data)
    counts = np.bincount(data.train.labels, minlength=10)
    full = np.bincount(plain.train.labels)
    np.testing.assert_array_equal(counts[:5], full[:5])
    np.testing.assert_array_equal(counts[5:], np.round(full[5:] * 0.1).astype(int))
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            data.get(split).labels, load_data(config.data).get(split).labels
        )
        assert len(data.get(split)) == len(plain.get(split))
    oversampled = load_data(
        ml_collections.ConfigDict({**config.data.to_dict(), "oversample": "balanced"})
    )
    assert set(np.bincount(oversampled.train.labels)) == {int(full[:5].max())}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"oversample": "smote"}, "data.oversample must be 'balanced' or None"),
        ({"imbalance": (1.0, 0.5)}, "one keep fraction in (0, 1] per class (4)"),
        ({"imbalance": (1.0, 0.0, 1.0, 1.0)}, "one keep fraction in (0, 1] per class"),
        ({"smote": {}, "oversample": "balanced"}, "data.smote and data.oversample both"),
        ({"smote": {"k": 3}}, "data.smote must be None or a mapping with keys"),
        ({"smote": {"k_neighbors": 0}}, "data.smote.k_neighbors must be an integer >= 1"),
        ({"smote": {}}, "data.smote: SMOTE with k_neighbors=5 needs more than 5 examples"),
    ],
)
def test_data_option_errors_are_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        apply_train_options(_splits(), _data_config(**options))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_data_options_off_leave_the_splits_alone():
    splits = _splits()
    assert apply_train_options(splits, _data_config()) is splits
    assert apply_train_options(splits, _data_config(oversample="none")) is splits
    assert apply_train_options(splits, _data_config(smote=config_sections.smote())) is splits


# --- SMOTE --------------------------------------------------------------------------------------


def test_smote_balances_counts_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [60, 12, 8])
    features = (rng.normal(size=(len(labels), 6)) + labels[:, None] * 3).astype(np.float32)
    resampled, new_labels = smote(features, labels, seed=0)
    np.testing.assert_array_equal(np.bincount(new_labels), [60, 60, 60])
    np.testing.assert_array_equal(resampled[: len(labels)], features)  # originals first
    assert resampled.dtype == np.float32 and new_labels.dtype == labels.dtype
    again, _ = smote(features, labels, seed=0)
    np.testing.assert_array_equal(resampled, again)
    other, _ = smote(features, labels, seed=1)
    assert not np.array_equal(resampled, other)
    # Synthetic minority examples lie between minority examples (within their bounding box).
    synthetic = resampled[len(labels) :][new_labels[len(labels) :] == 2]
    members = features[labels == 2]
    assert np.all(synthetic >= members.min(0) - 1e-6) and np.all(synthetic <= members.max(0) + 1e-6)


def test_smote_keeps_the_shape_of_embedding_arrays_and_checks_neighbours():
    labels = np.repeat(np.arange(2), [20, 7])
    features = np.random.default_rng(1).normal(size=(len(labels), 2, 3))
    resampled, new_labels = smote(features, labels, seed=0)
    assert resampled.shape == (40, 2, 3) and np.bincount(new_labels).tolist() == [20, 20]
    with pytest.raises(ValueError, match="needs more than 7 examples of every class"):
        smote(features, labels, k_neighbors=7)


def _clustered(counts, seed=0, shape=(2, 2, 1)):
    """Float features [N, *shape] of len(counts) separated classes, labels int32 [N]."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(labels), *shape)) + 3 * labels.reshape(-1, 1, 1, 1)
    return features.astype(np.float32), labels


def _on_neighbour_segments(synthetic, originals, k):
    """Whether every synthetic row is x_i + lam * (x_j - x_i), 0 <= lam <= 1, for an original
    x_i and one of its k nearest originals x_j (all of one class)."""
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(originals).kneighbors(originals)
    start = np.repeat(originals, k, axis=0)
    step = originals[neighbours[:, 1:].ravel()] - start  # [pairs, D]
    offset = synthetic[:, None, :] - start[None]  # [synthetic, pairs, D]
    lam = (offset * step).sum(-1) / (step * step).sum(-1)
    residual = np.linalg.norm(offset - lam[..., None] * step, axis=-1)
    residual = np.where((lam >= -1e-6) & (lam <= 1 + 1e-6), residual, np.inf)
    return bool(np.all(residual.min(axis=1) < 1e-4))


def test_smote_option_equals_imblearn_and_interpolates_same_class_neighbours():
    features, labels = _clustered([40, 12, 8])
    empty = ArraySource(inputs=features[:3], labels=labels[:3])
    splits = DataSplits(ArraySource(inputs=features, labels=labels), empty, empty, info={})
    options = {"k_neighbors": 3, "sampling_strategy": {"1": 30, "2": 20}}
    train = apply_train_options(splits, _data_config(split_seed=7, smote=options)).train
    flat = features.reshape(len(labels), -1)
    sampler = SMOTE(sampling_strategy={1: 30, 2: 20}, k_neighbors=3, random_state=7)
    expected, expected_labels = sampler.fit_resample(flat, labels)
    np.testing.assert_array_equal(train.labels, expected_labels)
    np.testing.assert_array_equal(np.bincount(train.labels), [40, 30, 20])
    inputs = train.arrays["inputs"]
    assert inputs.shape == (90, 2, 2, 1) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs.reshape(90, -1), expected, rtol=1e-6)
    np.testing.assert_array_equal(inputs[: len(labels)], features)  # originals first
    for cls in (1, 2):
        synthetic = inputs[len(labels) :][train.labels[len(labels) :] == cls].reshape(-1, 4)
        assert _on_neighbour_segments(synthetic, flat[labels == cls], k=3)
        assert not _on_neighbour_segments(synthetic, flat[labels == 0], k=3)
    auto = apply_train_options(splits, _data_config(smote={"k_neighbors": 3})).train
    np.testing.assert_array_equal(np.bincount(auto.labels), [40, 40, 40])


def test_smote_resamples_the_training_fold_only():
    features, labels = _clustered([60, 18, 12], seed=1)
    pool = DataSplits(
        ArraySource(inputs=features[:70], labels=labels[:70]),
        ArraySource(inputs=features[70:], labels=labels[70:]),
        ArraySource(inputs=features[::9], labels=labels[::9]),
        info={},
    )
    fold = cross_validation_fold(pool, folds=3, fold=1, seed=0)
    resampled = apply_train_options(fold, _data_config(smote={"k_neighbors": 3}))
    for split in ("val", "test"):  # the held-out fold and the test split, untouched
        assert resampled.get(split) is fold.get(split)
    train = in_memory_arrays(fold.train)
    count = len(train["labels"])
    out = resampled.train.arrays
    np.testing.assert_array_equal(out["inputs"][:count], train["inputs"])
    held_out = in_memory_arrays(fold.val)["inputs"].reshape(len(fold.val), -1)
    for cls in (1, 2):
        synthetic = out["inputs"][count:][out["labels"][count:] == cls].reshape(-1, 4)
        own = train["inputs"][train["labels"] == cls].reshape(-1, 4)
        assert len(synthetic) and _on_neighbour_segments(synthetic, own, k=3)
        # No synthetic example comes from (or copies) a held-out example.
        assert np.min(np.linalg.norm(synthetic[:, None] - held_out[None], axis=-1)) > 1e-4


def test_smote_needs_in_memory_feature_arrays():
    labels = np.repeat(np.arange(2), [20, 8]).astype(np.int32)
    tokens = ArraySource(tokens=np.ones((28, 4), np.int32), labels=labels)
    streamed = SubsetSource([{"inputs": np.zeros(2), "labels": 0}] * 28, np.arange(28))
    for train, message in (
        (tokens, "data.smote needs float feature arrays ('inputs' and 'labels')"),
        (streamed, "data.smote needs in-memory feature arrays"),
    ):
        with pytest.raises(ConfigError) as error:
            apply_train_options(DataSplits(train, tokens, tokens), _data_config(smote={}))
        assert message in str(error.value) and "\n" not in str(error.value)


def test_digits_imbalanced_smote_runs_after_the_fold_split():
    config = load_config(EXPERIMENT, ["--config.data.smote.enabled=true"])
    assert not load_config(EXPERIMENT).data.smote.enabled
    folds = {"cv_folds": 3, "cv_fold": 2}
    data = load_data(ml_collections.ConfigDict({**config.data.to_dict(), **folds}))
    plain = config.data.to_dict() | folds | {"smote": None}
    reference = load_data(ml_collections.ConfigDict(plain))
    for split in ("val", "test"):
        for name, array in in_memory_arrays(reference.get(split)).items():
            np.testing.assert_array_equal(in_memory_arrays(data.get(split))[name], array)
    train = in_memory_arrays(reference.train)
    assert len(set(np.bincount(data.train.labels))) == 1  # every class up to the largest
    np.testing.assert_array_equal(
        data.train.arrays["inputs"][: len(reference.train)], train["inputs"]
    )
