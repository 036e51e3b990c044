"""The synthesised speech corpus: its plan (grammar, held-out transcripts, accents and voice
settings) and, where espeak-ng and sox are installed, a tiny generated corpus: its split
properties, byte-for-byte determinism and all-or-nothing writing."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from jaxdl.data import speech_corpus
from jaxdl.data.speech_corpus import (
    COMMANDS,
    DIGITS,
    TEST_ONLY_ACCENTS,
    TRAIN_ACCENTS,
    TRAIN_PITCH,
    TRAIN_RATE,
    generate_corpus,
    grammar_vocabulary,
    plan_corpus,
)
from jaxdl.errors import DataError, UserError

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (apt-get install espeak-ng sox)",
)
TINY = {"train_size": 40, "val_size": 8, "test_size": 16}


def _words(texts) -> set[str]:
    return {word for text in texts for word in text.split()}


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / f"{split}.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _out_of_range(rate: int, pitch: int) -> bool:
    rate_out = not TRAIN_RATE[0] <= rate <= TRAIN_RATE[1]
    return rate_out or not TRAIN_PITCH[0] <= pitch <= TRAIN_PITCH[1]


def test_grammar_covers_the_vocabulary_the_issue_asks_for():
    vocabulary = grammar_vocabulary()
    assert len(vocabulary) >= 200 and len(COMMANDS) >= 30
    assert set(COMMANDS) | set(DIGITS) <= vocabulary


def test_default_plan_holds_out_transcripts_accents_and_voice_settings():
    plan = plan_corpus(0, {"train": 4000, "val": 400, "test": 400})
    texts = {split: {u.text for u in utterances} for split, utterances in plan.items()}
    assert not texts["test"] & texts["train"] and not texts["val"] & texts["train"]
    assert _words(texts["test"]) | _words(texts["val"]) <= _words(texts["train"])
    assert all(1 <= len(u.text.split()) <= 7 for us in plan.values() for u in us)
    accents = {split: {u.accent for u in utterances} for split, utterances in plan.items()}
    assert accents["train"] == accents["val"] == set(TRAIN_ACCENTS)
    assert set(TEST_ONLY_ACCENTS) <= accents["test"]
    test = plan["test"]
    unseen = [u.accent in TEST_ONLY_ACCENTS for u in test]
    out = [_out_of_range(u.rate, u.pitch) for u in test]
    assert len(test) >= 300 and sum(unseen) == sum(out) == len(test) // 2
    assert not any(_out_of_range(u.rate, u.pitch) for u in plan["train"] + plan["val"])
    noisy = sum(u.snr_db is not None for u in plan["train"]) / len(plan["train"])
    assert 0.25 < noisy < 0.35
    assert plan == plan_corpus(0, {"train": 4000, "val": 400, "test": 400})


def test_missing_tools_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install espeak-ng sox") as error:
        generate_corpus(tmp_path / "corpus", **TINY)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "corpus").exists()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("speech")
    return generate_corpus(root / "a", **TINY), generate_corpus(root / "b", **TINY)


@needs_tools
def test_tiny_corpus_split_properties(corpora):
    root = corpora[0]
    rows = {split: _rows(root, split) for split in ("train", "val", "test")}
    assert {split: len(r) for split, r in rows.items()} == {"train": 40, "val": 8, "test": 16}
    texts = {split: {row["text"] for row in r} for split, r in rows.items()}
    assert not texts["test"] & texts["train"] and not texts["val"] & texts["train"]
    assert _words(texts["test"]) | _words(texts["val"]) <= _words(texts["train"])
    train_accents = {row["accent"] for row in rows["train"]}
    assert len({row["accent"] for row in rows["test"]} - train_accents) >= 2
    rates = [int(row["rate"]) for row in rows["train"]]
    pitches = [int(row["pitch"]) for row in rows["train"]]
    test_rates = [int(row["rate"]) for row in rows["test"]]
    test_pitches = [int(row["pitch"]) for row in rows["test"]]
    assert any(not min(rates) <= rate <= max(rates) for rate in test_rates)
    assert any(not min(pitches) <= pitch <= max(pitches) for pitch in test_pitches)
    assert any(row["noise_snr"] for r in rows.values() for row in r)
    info = sf.info(root / rows["test"][0]["path"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    description = json.loads((root / "corpus.json").read_text())
    assert description["counts"] == {"train": 40, "val": 8, "test": 16}
    assert set(description["accents"]["train"]) == train_accents


@needs_tools
def test_same_seed_gives_identical_manifests_and_audio(corpora):
    def digest(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    first, second = digest(corpora[0]), digest(corpora[1])
    assert first == second and sum(name.endswith(".wav") for name in first) == 64


@needs_tools
def test_regenerating_skips_a_complete_corpus_and_refuses_other_settings(corpora):
    root = corpora[0]
    before = (root / "train.tsv").stat().st_mtime_ns
    assert generate_corpus(root, **TINY) == root
    sizes = ["--train-size", "40", "--val-size", "8", "--test-size", "16"]
    assert speech_corpus.main(["--out", str(root), *sizes]) == 0
    assert (root / "train.tsv").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="other settings"):
        generate_corpus(root, **{**TINY, "seed": 1})


@needs_tools
def test_an_interrupted_run_leaves_no_partial_corpus(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(speech_corpus, "_synthesise", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path / "corpus", **TINY)
    assert list(tmp_path.iterdir()) == []
