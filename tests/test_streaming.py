"""Streaming sources: the same records as reading the files directly, exact resume mid-epoch,
conversion to ArrayRecord, packing in the loader and ``data.on_error`` on corrupt files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxdl.data.array_record import ArrayRecordSource, write_array_records
from jaxdl.data.image_sources import HFImageSource, ImageFolderSource
from jaxdl.data.loading import load_data, open_pool
from jaxdl.data.packing import PackedRows
from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader
from jaxdl.data.record_errors import GuardedSource, read_error_report
from jaxdl.data.records import RecordError
from jaxdl.data.text_sources import ByteTokenizer, HFTextSource, TextLineSource, TokenizedText
from jaxdl.data.views import SubsetSource, sample_channel_stats
from jaxdl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
IMAGE_FIELDS = {"inputs": np.float32, "labels": np.int32}


def _image_folder(root: Path, per_class: int = 6, size: int = 8, classes=("cat", "dog", "owl")):
    """Random RGB PNGs (each one distinct) in class folders; returns {path: (pixels, label)}."""
    rng = np.random.default_rng(0)
    truth = {}
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            path = root / name / f"{i:03d}.png"
            Image.fromarray(pixels).save(path)
            truth[str(path)] = (pixels, label)
    return truth


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for key in x:
            if isinstance(x[key], str):
                assert x[key] == y[key]
            else:
                np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))
                assert np.asarray(x[key]).dtype == np.asarray(y[key]).dtype


# --- each source gives the records the files hold ---------------------------------------------


def test_image_folder_source_decodes_each_file_as_pil_reads_it(tmp_path):
    truth = _image_folder(tmp_path)
    source = ImageFolderSource(tmp_path)
    assert source.class_names == ["cat", "dog", "owl"] and len(source) == len(truth)
    for i in range(len(source)):
        pixels, label = truth[source.describe(i)]
        record = source[i]
        np.testing.assert_array_equal(record["inputs"], pixels)
        assert record["inputs"].dtype == np.uint8 and record["labels"] == label
    np.testing.assert_array_equal(source.labels, [truth[source.describe(i)][1] for i in range(18)])


def test_image_folder_source_resizes_like_pil_and_checks_sizes(tmp_path):
    truth = _image_folder(tmp_path)
    resized = ImageFolderSource(tmp_path, image_size=(5, 7), color_mode="grayscale")
    path = resized.describe(4)
    expected = Image.fromarray(truth[path][0]).convert("L").resize((7, 5), Image.BILINEAR)
    np.testing.assert_array_equal(resized[4]["inputs"][..., 0], np.asarray(expected))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "owl" / "zzz.png")
    source = ImageFolderSource(tmp_path)
    with pytest.raises(RecordError, match=r"zzz\.png is 9x9 but the folder's images are 8x8"):
        source[len(source) - 1]


def test_text_line_source_reads_the_lines_that_hold_text(tmp_path):
    lines = ["first line", "", "zweite Zeile ü", "  \t ", "", "中文 第三", "no newline at end"]
    path = tmp_path / "a.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    source = TextLineSource(path)
    assert [r["text"] for r in _records(source)] == [line for line in lines if line.strip()]
    assert source.describe(2) == f"{path}:6"
    tokens = TokenizedText(source, ByteTokenizer())
    np.testing.assert_array_equal(tokens[1]["tokens"], list("zweite Zeile ü".encode()))
    empty = TokenizedText(_ListSource([{"text": "ok"}, {"text": " \n "}]), ByteTokenizer())
    with pytest.raises(RecordError, match="record 1 of _ListSource.* is empty text"):
        empty[1]


def test_hf_sources_read_rows_of_a_saved_table(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(8)]
    table = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(x) for x in images],
            "label": [0, 1, 2, 0, 1, 2, 0, 1],
            "text": [f"review number {i}" for i in range(8)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["a", "b", "c"]),
                "text": datasets.Value("string"),
            }
        ),
    )
    table.save_to_disk(str(tmp_path / "hf"))
    source = HFImageSource(str(tmp_path / "hf"))
    assert source.class_names == ["a", "b", "c"] and len(source) == 8
    for i, pixels in enumerate(images):
        np.testing.assert_array_equal(source[i]["inputs"], pixels)
        assert source[i]["labels"] == table[i]["label"]
    text = HFTextSource(str(tmp_path / "hf"), text_column="text", label_column="label")
    assert [r["text"] for r in _records(text)] == table["text"]
    with pytest.raises(DataError, match="column 'caption' not found"):
        load_data(
            ml_collections.ConfigDict(
                {
                    "name": "hf_text",
                    "options": {"path": str(tmp_path / "hf"), "text_column": "caption"},
                }
            )
        )


def test_array_record_round_trip_keeps_records_dtypes_and_labels(tmp_path):
    _image_folder(tmp_path / "folder")
    folder = ImageFolderSource(tmp_path / "folder")
    metadata = write_array_records(folder, tmp_path / "ar", num_shards=4, info={"kind": "image"})
    converted = ArrayRecordSource(tmp_path / "ar")
    assert [s["records"] for s in metadata["shards"]] == [4, 5, 4, 5]
    assert metadata["features"]["inputs"] == {"dtype": "uint8", "shape": [8, 8, 3]}
    _assert_same_records(_records(converted), _records(folder))
    np.testing.assert_array_equal(converted.labels, folder.labels)
    assert "data-00003-of-00004.array_record record 0" in converted.describe(13)
    with pytest.raises(FileExistsError):
        write_array_records(folder, tmp_path / "ar")


def test_array_record_keeps_variable_length_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("short\na much longer line of text\nmid size\n")
    source = TextLineSource(path)
    metadata = write_array_records(source, tmp_path / "ar", info={"kind": "text"})
    assert metadata["features"]["text"] == {"dtype": "str", "shape": None}
    _assert_same_records(_records(ArrayRecordSource(tmp_path / "ar")), _records(source))


@pytest.mark.slow  # CI time (20 s): the ArrayRecord round-trip tests stay
def test_convert_command_then_training_splits_match_the_folder(tmp_path):
    _image_folder(tmp_path / "folder", per_class=10)
    config = f"experiments/folder_resnet.py:root={tmp_path / 'folder'},image_size=8"
    result = subprocess.run(
        [sys.executable, "-m", "jaxdl", "data", "convert", "--config", config,
         "--out", str(tmp_path / "ar"), "--shards", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 30 records in 3 shard(s)" in result.stdout
    data_config = {"split_fractions": (0.6, 0.2, 0.2), "split_seed": 3}
    from_folder = load_data(
        ml_collections.ConfigDict(
            {"name": "image_folder", "options": {"root": str(tmp_path / "folder")}, **data_config}
        )
    )
    from_ar = load_data(
        ml_collections.ConfigDict(
            {"name": "array_record", "options": {"path": str(tmp_path / "ar")}, **data_config}
        )
    )
    assert from_ar.info["class_names"] == from_folder.info["class_names"]
    for split in ("train", "val", "test"):
        _assert_same_records(_records(from_ar.get(split)), _records(from_folder.get(split)))
    again = subprocess.run(
        [sys.executable, "-m", "jaxdl", "data", "convert", "--config", config,
         "--out", str(tmp_path / "ar")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr.strip().splitlines()[-1]


# --- splits and statistics -------------------------------------------------------------------


def test_image_splits_are_stratified_views_standardised_with_train_statistics(tmp_path):
    _image_folder(tmp_path, per_class=10)
    data = load_data(
        ml_collections.ConfigDict({"name": "image_folder", "options": {"root": str(tmp_path)}})
    )
    sizes = [len(data.get(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 30 and sizes[0] == 21
    train_pixels = np.stack([r["inputs"] for r in _records(data.train)])
    # Standardised with the train split's own statistics (all 21 records are in the sample).
    np.testing.assert_allclose(train_pixels.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_pixels.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    assert np.bincount(data.train.labels, minlength=3).tolist() == [7, 7, 7]
    indices = np.concatenate([data.get(s).source.indices for s in ("train", "val", "test")])
    assert sorted(indices.tolist()) == list(range(30))


def test_sampled_statistics_are_bounded_seeded_and_exact_on_the_sample(tmp_path):
    _image_folder(tmp_path, per_class=10)
    source = ImageFolderSource(tmp_path)
    mean, std = sample_channel_stats(source, max_records=7, seed=5)
    again = sample_channel_stats(source, max_records=7, seed=5)
    other = sample_channel_stats(source, max_records=7, seed=6)
    np.testing.assert_array_equal(mean, again[0])
    assert not np.allclose(mean, other[0])
    chosen = np.sort(np.random.default_rng(5).choice(len(source), 7, replace=False))
    pixels = np.stack([source[int(i)]["inputs"] for i in chosen]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-5)


# --- exact resume mid-epoch, for every source -------------------------------------------------


def _sources(tmp_path):
    _image_folder(tmp_path / "folder", per_class=7)
    folder = ImageFolderSource(tmp_path / "folder")
    write_array_records(folder, tmp_path / "ar", num_shards=2)
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(f"line {i} " + "x" * (i % 7) for i in range(23)))
    labelled = TokenizedText(TextLineSource(text), ByteTokenizer(), max_len=12)
    return {
        "folder": (folder, {"inputs": np.float32, "labels": np.int32}),
        "array_record": (ArrayRecordSource(tmp_path / "ar"), {"inputs": np.uint8}),
        "text": (labelled, {"tokens": np.int32}),
    }


@pytest.mark.parametrize("name", ["folder", "array_record", "text"])
def test_loader_resumes_exactly_mid_epoch(tmp_path, name):
    source, spec = _sources(tmp_path)[name]
    loader = make_train_loader(
        source, batch_size=4, seed=3, spec=spec, shard_index=1, shard_count=2
    )
    iterator = iter(loader)
    for _ in range(3):  # an epoch of this shard is 10-11 records: stop inside the first one
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]  # runs across the epoch boundary
    resumed = iter(loader)
    resumed.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
    for want, got in zip(expected, [next(resumed) for _ in range(5)], strict=True):
        _assert_same_records([want], [got])


def test_loader_with_workers_gives_the_same_batches_and_resumes(tmp_path):
    source, spec = _sources(tmp_path)["folder"]
    plain = iter(make_train_loader(source, batch_size=4, seed=1, spec=spec))
    loader = make_train_loader(source, batch_size=4, seed=1, spec=spec, worker_count=2)
    workers = iter(loader)
    try:
        batches = [next(workers) for _ in range(4)]
        state = workers.get_state()
        following = [next(workers) for _ in range(3)]
    finally:
        workers.close()
    epoch = np.concatenate([next(plain)["inputs"] for _ in range(5)])[:21]
    # Workers split the shuffled stream between them, so batches group records differently,
    # but the first 16 records are 16 distinct records of the same first epoch.
    first = np.concatenate([b["inputs"] for b in batches])
    keys = {float(x.sum()) for x in first}
    assert len(keys) == 16 and keys <= {float(x.sum()) for x in epoch}
    resumed = iter(loader)
    try:
        resumed.set_state(state)
        for want, got in zip(following, [next(resumed) for _ in range(3)], strict=True):
            _assert_same_records([want], [got])
    finally:
        resumed.close()


def test_shards_of_an_epoch_are_disjoint_and_cover_the_source(tmp_path):
    source, spec = _sources(tmp_path)["array_record"]
    sums = []
    for index in range(3):
        iterator = iter(
            make_train_loader(source, batch_size=1, seed=0, spec=spec, shard_index=index,
                              shard_count=3)
        )  # fmt: skip
        sums += [int(next(iterator)["inputs"].astype(np.int64).sum()) for _ in range(7)]
    expected = [int(r["inputs"].astype(np.int64).sum()) for r in _records(source)]
    assert sorted(sums) == sorted(expected)


# --- packing in the loader --------------------------------------------------------------------


def _packed_spec(row_length: int) -> dict:
    from jaxdl.tasks.base import Field

    return {
        "tokens": Field(np.int32, (row_length,)),
        "loss_mask": Field(np.float32, (row_length,)),
        "segment_ids": Field(np.int32, (row_length,)),
        "positions": Field(np.int32, (row_length,)),
    }


def test_packed_rows_hold_every_document_token_in_order(tmp_path):
    lengths = [3, 9, 1, 14, 5, 6, 2, 8]
    documents = [{"tokens": np.arange(1, n + 1, dtype=np.int32) + 100 * k}
                 for k, n in enumerate(lengths)]  # fmt: skip
    rows = PackedRows(_ListSource(documents), row_length=8)
    segments = []
    for row in _records(rows):
        assert row["tokens"].shape == (8,)
        np.testing.assert_array_equal(row["loss_mask"], row["segment_ids"] > 0)
        for segment in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
            where = row["segment_ids"] == segment
            np.testing.assert_array_equal(row["positions"][where], np.arange(where.sum()))
            segments.append(row["tokens"][where])
        assert (row["tokens"][row["segment_ids"] == 0] == 0).all()
    # Concatenated in order the segments are the documents (long ones continue in a new row).
    np.testing.assert_array_equal(np.concatenate(segments),
                                  np.concatenate([d["tokens"] for d in documents]))  # fmt: skip


def test_packing_loader_fills_rows_and_resumes(tmp_path):
    documents = [{"tokens": np.full(n, k + 1, np.int32)} for k, n in enumerate([5, 3, 12, 7, 2])]
    loader = make_train_loader(_ListSource(documents), batch_size=2, seed=0, spec=_packed_spec(6))
    iterator = iter(loader)
    first = [next(iterator) for _ in range(3)]
    for batch in first:
        assert batch["tokens"].shape == (2, 6) and set(batch) == set(_packed_spec(6))
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(4)]
    resumed = iter(loader)
    resumed.set_state(state)
    _assert_same_records(expected, [next(resumed) for _ in range(4)])
    # One epoch is 29 tokens: the first 3 batches (36 slots) hold all of them plus a new epoch.
    tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in first])
    assert sorted(np.bincount(tokens[:29], minlength=6)[1:].tolist()) == [2, 3, 5, 7, 12]


class _ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __repr__(self):
        return f"_ListSource(n={len(self.records)})"


def test_text_lines_dataset_gives_packed_lm_splits(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"document {i}: " + "abc " * (i % 9 + 1) for i in range(60)))
    data = load_data(
        ml_collections.ConfigDict(
            {"name": "text_lines", "options": {"paths": str(path), "seq_len": 15}}
        )
    )
    assert data.info["packed"] and data.info["seq_len"] == 15 and data.info["vocab_size"] == 256
    # Documents are split (42/9/9); train stays documents, val/test are packed once into rows.
    assert len(data.train) == 42
    total = sum(len(line.strip().encode()) for line in path.read_text().splitlines())
    train_tokens = sum(len(r["tokens"]) for r in _records(data.train))
    packed_tokens = sum(
        int(r["loss_mask"].sum()) for s in (data.val, data.test) for r in _records(s)
    )
    assert train_tokens + packed_tokens == total
    assert data.val[0]["tokens"].shape == (16,)
    assert data.info["unigram_counts"][ord("a")] > 0
    spec = _packed_spec(16)
    batches = list(iterate_eval_batches(data.val, batch_size=4, spec=spec))
    assert sum(b["mask"].sum() for b in batches) == len(data.val)


# --- data.on_error --------------------------------------------------------------------------


def _corrupt_folder(root: Path) -> tuple[str, str]:
    _image_folder(root, per_class=12)
    truncated, garbage = root / "dog" / "003.png", root / "owl" / "007.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage.write_text("not an image")
    return str(truncated), str(garbage)


def test_on_error_raise_names_the_file(tmp_path):
    truncated, _ = _corrupt_folder(tmp_path)
    source = ImageFolderSource(tmp_path)
    guarded = GuardedSource(source, "train", on_error="raise")
    index = next(i for i in range(len(source)) if source.describe(i) == truncated)
    with pytest.raises(DataError, match=rf"train split: cannot decode image file {truncated}"):
        guarded[index]
    iterator = iter(make_train_loader(guarded, batch_size=4, seed=0, spec={"inputs": np.uint8}))
    with pytest.raises(DataError, match="cannot decode image file"):
        for _ in range(20):
            next(iterator)


def test_on_error_skip_drops_and_reports_bad_records(tmp_path):
    bad = set(_corrupt_folder(tmp_path))
    source = ImageFolderSource(tmp_path)
    report = tmp_path / "errors.jsonl"
    guarded = GuardedSource(source, "train", "skip", max_error_fraction=0.2, report_path=report)
    iterator = iter(make_train_loader(guarded, batch_size=2, seed=0, spec={"labels": np.int32}))
    epoch = [next(iterator) for _ in range(17)]  # 34 readable records = one epoch
    assert len(np.concatenate([b["labels"] for b in epoch])) == 34
    assert read_error_report(report) == {"train": 2}
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert {source.describe(entry["index"]) for entry in lines} == bad
    # Evaluation leaves unreadable records out of the metrics (mask 0), never pads them in.
    batches = list(iterate_eval_batches(guarded, batch_size=8, spec={"labels": np.int32}))
    assert sum(b["mask"].sum() for b in batches) == 34


def test_on_error_skip_stops_when_too_many_records_fail(tmp_path):
    _corrupt_folder(tmp_path)
    source = SubsetSource(ImageFolderSource(tmp_path), np.arange(36))
    guarded = GuardedSource(source, "train", "skip", max_error_fraction=0.01)
    iterator = iter(make_train_loader(guarded, batch_size=2, seed=0, spec={"labels": np.int32}))
    with pytest.raises(
        DataError,
        match=r"\d of \d+ records read were unreadable, more than data.max_error_fraction=0.01",
    ):
        for _ in range(40):
            next(iterator)


def test_corrupt_array_record_bytes_are_a_record_error(tmp_path):
    _image_folder(tmp_path / "folder")
    write_array_records(ImageFolderSource(tmp_path / "folder"), tmp_path / "ar", num_shards=1)
    shard = next((tmp_path / "ar").glob("*.array_record"))
    data = bytearray(shard.read_bytes())
    data[200:260] = b"\xff" * 60  # inside the first records' payload
    shard.write_bytes(bytes(data))
    source = ArrayRecordSource(tmp_path / "ar")
    with pytest.raises(RecordError, match=r"cannot read .*data-00000-of-00001\.array_record"):
        for i in range(len(source)):
            source[i]


def test_invalid_utf8_line_is_a_record_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nbroken \xff\xfe here\nfine again\n")
    source = TextLineSource(path)
    with pytest.raises(RecordError, match=rf"{path}:2 is not valid UTF-8"):
        source[1]


def test_open_pool_refuses_datasets_that_split_as_they_load():
    from jaxdl.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be converted"):
        open_pool(ml_collections.ConfigDict({"name": "pydoc_lm"}))
