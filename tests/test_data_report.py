"""``jaxdl data-report`` on constructed data: planted exact duplicates, leaks, near duplicates,
conflicting labels, a corrupt image file and flipped labels are found (and nothing else); bad
input is one line and exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxdl.cli import main
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data_report import ReportOptions, analyse


def _images(count, seed, size=8):
    """Random float32 images [count, size, size, 1]: pairwise correlations far below 0.9."""
    return np.random.default_rng(seed).normal(size=(count, size, size, 1)).astype(np.float32)


def _image_splits(train, val, test, labels, num_classes=3):
    sources = [
        ArraySource(inputs=x, labels=np.asarray(y, np.int32))
        for x, y in zip((train, val, test), labels, strict=True)
    ]
    return DataSplits(*sources, info={"class_names": [f"c{k}" for k in range(num_classes)]})


def _members(group):
    return {(m["split"], m["index"]) for m in group["members"]}


def test_planted_exact_duplicates_and_leaks_are_found_and_nothing_else():
    train, val, test = _images(20, 0), _images(8, 1), _images(8, 2)
    labels = [np.arange(20) % 3, np.arange(8) % 3, np.arange(8) % 3]
    train[6] = train[3]  # within train, same label (both 0)
    val[2] = train[5]  # train/val leak
    test[1] = val[4]  # val/test leak
    test[6] = train[9]  # train/test leak with a conflicting label
    labels[2][6] = (labels[0][9] + 1) % 3
    report, _ = analyse(_image_splits(train, val, test, labels))
    exact = report["exact_duplicates"]
    assert exact["groups"] == 4
    assert exact["within_split"] == {
        "train": {"groups": 1, "redundant_examples": 1},
        "val": {"groups": 0, "redundant_examples": 0},
        "test": {"groups": 0, "redundant_examples": 0},
    }
    assert exact["across_splits"] == {
        "train/val": {"groups": 1, "train_examples": 1, "val_examples": 1},
        "train/test": {"groups": 1, "train_examples": 1, "test_examples": 1},
        "val/test": {"groups": 1, "val_examples": 1, "test_examples": 1},
    }
    assert exact["label_conflict_groups"] == 1
    groups = exact["listed"]
    assert groups[0]["label_conflict"] and _members(groups[0]) == {("train", 9), ("test", 6)}
    assert {frozenset(_members(g)) for g in groups} == {
        frozenset({("train", 9), ("test", 6)}),
        frozenset({("train", 3), ("train", 6)}),
        frozenset({("train", 5), ("val", 2)}),
        frozenset({("val", 4), ("test", 1)}),
    }
    assert report["near_duplicates"]["pairs"] == 0  # random images are not near each other
    assert report["unreadable_records"]["counts"] == {"train": 0, "val": 0, "test": 0}
    assert not report["label_issues"]["computed"] and report["label_issues"]["reason"]


def test_class_counts_equal_numpy_bincount_with_imbalance_ratio_and_missing_classes():
    rng = np.random.default_rng(3)
    labels = [rng.integers(0, 4, 50), rng.integers(0, 3, 12), rng.integers(0, 4, 12)]
    data = _image_splits(_images(50, 4), _images(12, 5), _images(12, 6), labels, num_classes=4)
    counts = analyse(data)[0]["class_counts"]
    for name, y in zip(("train", "val", "test"), labels, strict=True):
        expected = np.bincount(y, minlength=4)
        assert counts["per_split"][name] == expected.tolist()
    train = np.bincount(labels[0], minlength=4)
    assert counts["imbalance_ratio"]["train"] == pytest.approx(train.max() / train.min(), 1e-3)
    assert counts["imbalance_ratio"]["val"] is None and counts["missing_classes"]["val"] == ["c3"]


def test_near_duplicate_images_are_found_at_the_threshold_and_unrelated_ones_are_not():
    train, val, test = _images(10, 7, 16), _images(4, 8, 16), _images(4, 9, 16)
    test[0] = 0.5 * train[2] + 3.0  # brightness and contrast only: cosine 1
    noisy = train[4] + 0.2 * _images(1, 10, 16)[0]
    val[1] = noisy
    # Independently: the Pearson correlation of the 16x16 pixels (thumbnails are not resized).
    cosine = np.corrcoef(train[4].ravel(), noisy.ravel())[0, 1]
    labels = [np.zeros(10, int), np.zeros(4, int), np.zeros(4, int)]
    data = _image_splits(train, val, test, labels)

    def pairs(threshold):
        near = analyse(data, ReportOptions(image_threshold=threshold))[0]["near_duplicates"]
        return {
            (p["a"]["split"], p["a"]["index"], p["b"]["split"], p["b"]["index"])
            for p in near["listed"]
        }, near

    found, near = pairs(float(cosine) - 1e-5)
    assert found == {("train", 2, "test", 0), ("train", 4, "val", 1)}
    assert near["across_splits"]["train/val"] == {
        "pairs": 1,
        "train_examples": 1,
        "val_examples": 1,
    }
    assert pairs(float(cosine) + 1e-4)[0] == {("train", 2, "test", 0)}


def _grams(text):
    core = "".join(c for c in text if c.isalnum())
    return {core[i : i + 3] for i in range(len(core) - 2)}


def _text_splits(texts, labels):
    sources = [
        ArraySource(tokens=np.zeros((len(t), 4), np.int32), labels=np.asarray(y, np.int32))
        for t, y in zip(texts, labels, strict=True)
    ]
    info = {
        "class_names": ["neg", "pos"],
        "texts": dict(zip(("train", "val", "test"), texts, strict=True)),
    }
    return DataSplits(*sources, info=info)


def test_text_duplicates_near_duplicates_and_conflicting_labels():
    rng = np.random.default_rng(11)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    texts = [["".join(rng.choice(letters, 40)) for _ in range(n)] for n in (12, 5, 5)]
    labels = [np.arange(12) % 2, np.arange(5) % 2, np.arange(5) % 2]
    base = "the quick brown fox jumps over the lazy dog near the river bank"
    texts[0][0] = base
    texts[2][3] = base + " today"  # near duplicate across train/test
    texts[1][0] = "Exactly  the same\u3000review"  # whitespace differs: an exact duplicate
    texts[0][5] = "Exactly the same review"
    labels[1][0], labels[0][5] = 0, 1  # ... with conflicting labels
    similarity = len(_grams(base) & _grams(base + " today")) / len(
        _grams(base) | _grams(base + " today")
    )
    data = _text_splits(texts, labels)

    def run(threshold):
        return analyse(data, ReportOptions(text_threshold=threshold))[0]

    report = run(similarity)
    exact = report["exact_duplicates"]
    assert exact["groups"] == 1 and exact["label_conflict_groups"] == 1
    assert _members(exact["listed"][0]) == {("train", 5), ("val", 0)}
    near = report["near_duplicates"]
    assert near["pairs"] == 1 and near["threshold"] == similarity
    pair = near["listed"][0]
    assert (pair["a"]["split"], pair["a"]["index"], pair["b"]["split"], pair["b"]["index"]) == (
        "train", 0, "test", 3,
    )  # fmt: skip
    assert pair["similarity"] == pytest.approx(similarity, abs=1e-4)
    assert pair["b"]["text"].endswith("today")
    assert run(similarity + 0.01)["near_duplicates"]["pairs"] == 0


def test_unlabelled_token_rows_skip_the_label_sections():
    rows = np.random.default_rng(0).integers(0, 50, (6, 9)).astype(np.int32)
    val = rows[:2].copy()
    val[1] = rows[4]  # a leaked row
    data = DataSplits(
        ArraySource(tokens=rows), ArraySource(tokens=val), ArraySource(tokens=rows[:1] + 1)
    )
    report, _ = analyse(data)
    assert report["class_counts"] is None and not report["label_issues"]["computed"]
    assert report["exact_duplicates"]["across_splits"]["train/val"]["groups"] == 2
    assert not report["near_duplicates"]["computed"]


def test_confident_learning_flags_the_planted_flipped_labels():
    rng = np.random.default_rng(5)
    true = np.repeat([0, 1, 2], 20)
    rng.shuffle(true)
    flipped = np.asarray([3, 17, 41, 52])
    given = true.copy()
    given[flipped] = (true[flipped] + 1) % 3
    probs = np.full((60, 3), 0.1)
    probs[np.arange(60), true] = 0.8  # the held-out model is right about every example
    labels = [given[:40], given[40:], np.zeros(6, int)]
    data = _image_splits(_images(40, 1), _images(20, 2), _images(6, 3), labels)
    issues = analyse(data, probabilities=probs, label_source="synthetic")[0]["label_issues"]
    # By hand: each class threshold lies between 0.1 and 0.8, so every example is confidently
    # of its true class; the confident joint counts (given, true) pairs, every row is complete
    # (no calibration change) and the noise rate is the flipped fraction.
    hand = np.zeros((3, 3), int)
    np.add.at(hand, (given, true), 1)
    assert issues["confident_joint_counts"] == hand.tolist()
    assert issues["estimated_noise_rate"] == pytest.approx(len(flipped) / 60, abs=1e-6)
    assert issues["flagged"] == len(flipped) and issues["examples_scored"] == 60
    top = {(e["split"], e["index"]): e for e in issues["top"]}
    where = {(("train", i) if i < 40 else ("val", i - 40)): i for i in flipped}
    assert set(top) == set(where)
    for key, i in where.items():
        assert top[key]["label"] == f"c{given[i]}" and top[key]["suggested"] == f"c{true[i]}"
        assert (top[key]["p_label"], top[key]["p_suggested"]) == (0.1, 0.8)


def _write_image_folder(root):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k in range(6):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"a_{k}.png")
    corrupt = root / "dog" / "b_corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return corrupt


def _write_config(path, body):
    path.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    config = ml_collections.ConfigDict()\n"
        f"    config.data = ml_collections.ConfigDict({body!r})\n"
        "    return config\n"
    )
    return str(path)


def test_cli_reports_a_corrupt_image_file_by_name(tmp_path, capsys):
    corrupt = _write_image_folder(tmp_path / "images")
    config = _write_config(
        tmp_path / "folder.py",
        {"name": "image_folder", "options": {"root": str(tmp_path / "images")},
         "split_fractions": (0.5, 0.25, 0.25), "split_seed": 0},
    )  # fmt: skip
    out = tmp_path / "report"
    assert main(["data-report", "--config", config, "--out", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    unreadable = report["unreadable_records"]
    assert sum(unreadable["counts"].values()) == 1
    (entry,) = unreadable["records"]
    assert entry["record"] == str(corrupt) and str(corrupt) in entry["error"]
    assert report["class_counts"]["class_names"] == ["cat", "dog"]
    assert sum(map(sum, report["class_counts"]["per_split"].values())) == 13
    assert (out / "class_counts.png").stat().st_size > 0
    assert "unreadable records" in capsys.readouterr().out


def _fake_cv_root(root, data):
    for fold in range(2):
        workdir = root / f"fold_{fold}"
        workdir.mkdir(parents=True)
        (workdir / "results.json").write_text("{}")
        config = {"data": {**data, "cv_folds": 2, "cv_fold": fold}}
        (workdir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config", "missing.py", "--out", "{tmp}/r"], "config file not found"),
        (["--config", "experiments/digits_resnet.py", "--out", "{tmp}/r", "--bogus"],
         "unexpected argument '--bogus'"),
        (["--config", "experiments/digits_resnet.py"], "the following arguments are required"),
        (["--config", "experiments/digits_resnet.py", "--out", "{tmp}/r",
          "--text-threshold", "0"], "is not in (0"),
        (["--config", "experiments/digits_resnet.py", "--out", "{tmp}/file"],
         "exists and is not a directory"),
        (["--config", "experiments/digits_resnet.py", "--out", "{tmp}/r", "--oof", "{tmp}/none"],
         "no such directory"),
        (["--config", "experiments/digits_resnet.py", "--out", "{tmp}/r", "--oof", "{tmp}/cv"],
         "data.split_seed is 1 there, 0 here"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    _fake_cv_root(tmp_path / "cv", {"name": "digits", "split_fractions": [0.7, 0.15, 0.15],
                                    "split_seed": 1, "standardize": True})  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["data-report", *(a.replace("{tmp}", str(tmp_path)) for a in args)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxdl: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.slow  # trains two small folds of the default experiment (~3 min on 2 busy cores)
def test_cv_then_data_report_scores_every_train_and_val_example_out_of_fold(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    config = ["--config", "experiments/digits_resnet.py:depth=8,epochs=3", "--config.model.width=8"]
    cv = [sys.executable, "-m", "jaxdl", "cv", "--folds", "2", "--workdir", str(tmp_path / "cv")]
    done = subprocess.run(cv + config, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "report"
    report_cmd = [sys.executable, "-m", "jaxdl", "data-report", "--out", str(out),
                  "--oof", str(tmp_path / "cv")]  # fmt: skip
    done = subprocess.run(report_cmd + config, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "data_report.json").read_text())
    issues = report["label_issues"]
    sizes = report["sizes"]
    assert issues["computed"] and issues["examples_scored"] == sizes["train"] + sizes["val"]
    assert np.sum(issues["confident_joint_counts"]) <= issues["examples_scored"]
    assert 0 <= issues["estimated_noise_rate"] <= 1
    assert all(
        e["split"] in ("train", "val") and e["label"] != e["suggested"] for e in issues["top"]
    )
    assert issues["top"] and (out / "label_issues.png").stat().st_size > 0
    other = subprocess.run(report_cmd + config + ["--config.data.split_seed=3"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert other.returncode == 2 and "trained on other data" in other.stderr
