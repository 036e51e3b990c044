"""Cross-validation: folds re-partition train+val (stratified, seeded, disjoint, covering), test
stays fixed; ``jaxdl cv`` trains one workdir per fold and summarises mean ± std."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdl.cross_validation import format_summary, summarize
from jaxdl.data.folds import cross_validation_fold
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.errors import ConfigError


def _splits(labels_train, labels_val, with_labels=True):
    def source(labels, offset):
        ids = np.arange(offset, offset + len(labels))
        arrays = {"inputs": ids.astype(np.float32)}
        if with_labels:
            arrays["labels"] = np.asarray(labels, np.int32)
        return ArraySource(**arrays)

    train = source(labels_train, 0)
    val = source(labels_val, len(labels_train))
    test = source([0, 1], 10_000)
    return DataSplits(train, val, test, info={"num_classes": 3, "train_examples": len(train)})


def _ids(source):
    return sorted(int(source[i]["inputs"]) for i in range(len(source)))


def test_folds_partition_train_and_val_and_keep_the_test_split():
    rng = np.random.default_rng(0)
    data = _splits(rng.integers(0, 3, 70), rng.integers(0, 3, 20))
    folds = [cross_validation_fold(data, 4, k, seed=1) for k in range(4)]
    pool = set(range(90))
    held_out = [set(_ids(f.val)) for f in folds]
    assert set().union(*held_out) == pool and sum(map(len, held_out)) == 90  # disjoint cover
    for fold, val_ids in zip(folds, held_out, strict=True):
        assert set(_ids(fold.train)) == pool - val_ids
        assert fold.test is data.test and fold.info["cv_folds"] == 4
        assert "train_examples" not in fold.info  # recounted from the new train split


def test_folds_are_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [40, 30, 20])
    data = _splits(labels[:70], labels[70:])
    fold = cross_validation_fold(data, 5, 2, seed=0)
    val_labels = np.asarray([int(fold.val[i]["labels"]) for i in range(len(fold.val))])
    assert np.bincount(val_labels).tolist() == [8, 6, 4]
    again = cross_validation_fold(data, 5, 2, seed=0)
    other = cross_validation_fold(data, 5, 2, seed=1)
    assert _ids(again.val) == _ids(fold.val) and _ids(other.val) != _ids(fold.val)


def test_unlabelled_pools_use_shuffled_kfold():
    data = _splits(np.zeros(30), np.zeros(10), with_labels=False)
    sizes = [len(cross_validation_fold(data, 4, k, seed=0).val) for k in range(4)]
    assert sizes == [10, 10, 10, 10]


@pytest.mark.parametrize(
    "folds,fold,message",
    [
        (1, 0, "cv_folds must be an integer >= 2"),
        (3, 3, r"cv_fold must be an integer in \[0, 3\)"),
        (3, -1, "cv_fold must be an integer"),
        (6, 0, r"fewer \(class: count\): \{2: 5\}"),
    ],
)
def test_bad_fold_settings_are_one_clear_error(folds, fold, message):
    labels = np.repeat([0, 1, 2], [20, 20, 5])
    with pytest.raises(ConfigError, match=message):
        cross_validation_fold(_splits(labels[:35], labels[35:]), folds, fold, seed=0)


def test_summary_is_the_mean_and_sample_std_of_each_metric():
    per_fold = [
        {"accuracy": a, "loss": loss, "step": 9, "val": {"accuracy": v}}
        for a, loss, v in [(0.9, 0.3, 0.8), (0.8, 0.5, 0.7), (0.7, 0.4, 0.9)]
    ]
    summary = summarize(per_fold)
    assert summary["test"]["accuracy"]["mean"] == pytest.approx(0.8)
    assert summary["test"]["accuracy"]["std"] == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1))
    assert summary["val"]["accuracy"]["per_fold"] == [0.8, 0.7, 0.9]
    assert "step" not in summary["test"]
    assert "| accuracy | 0.8000 ± 0.1000 | 0.8000 ± 0.1000 |" in format_summary(
        summary, ["accuracy"]
    )


@pytest.mark.slow  # trains two folds (~40 s)
def test_jaxdl_cv_trains_each_fold_once_and_resumes_by_skipping_finished_folds(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "jaxdl", "cv", "--folds", "2", "--workdir", str(tmp_path),
               "--config", "experiments/digits_resnet.py:depth=8,epochs=3",
               "--config.model.width=8"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "| accuracy |" in done.stdout
    summary = json.loads((tmp_path / "cv_results.json").read_text())
    for fold in range(2):
        config = json.loads((tmp_path / f"fold_{fold}" / "config.json").read_text())
        assert config["data"]["cv_folds"] == 2 and config["data"]["cv_fold"] == fold
    accuracies = summary["test"]["accuracy"]["per_fold"]
    assert accuracies == [
        json.loads((tmp_path / f"fold_{k}" / "results.json").read_text())["accuracy"]
        for k in range(2)
    ]
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "train time" not in again.stdout  # nothing retrained
    assert json.loads((tmp_path / "cv_results.json").read_text())["test"] == summary["test"]
