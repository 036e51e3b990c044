"""Speech end to end on the committed 50-utterance sample: training through the trainer writes
WER/CER equal to jiwer's and per-utterance transcripts, a killed run resumes bit-identical with
the audio source, and ``jaxdl transcribe`` names unreadable files."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdl.config import load_config
from jaxdl.experiment import build_experiment
from jaxdl.train import Trainer
from tests.test_resume import Interrupted, _crash_after, _params

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "tests", "data", "speech")
CONFIG = os.path.join(REPO, "experiments", "speech_conformer.py")
OVERRIDES = (
    "--config.model.num_layers=1",
    "--config.model.d_model=48",
    "--config.model.num_heads=2",
    "--config.train.eval_every_steps=6",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.max_to_keep=10",
)


def _config(steps: int = 12):
    return load_config(f"{CONFIG}:data={SAMPLE},steps={steps},batch_size=8", list(OVERRIDES))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("speech") / "run"
    trainer = Trainer(build_experiment(_config()), str(workdir), quiet=True)
    results = trainer.fit()
    return workdir, results, _params(trainer.state)


def test_training_writes_wer_equal_to_jiwer_and_per_utterance_transcripts(trained):
    workdir, results, _ = trained
    assert results["utterances"] == 12
    assert results["wer"] == pytest.approx(results["wer_jiwer"], abs=1e-12)
    assert results["cer"] == pytest.approx(results["cer_jiwer"], abs=1e-12)
    rows = [json.loads(line) for line in (workdir / "transcripts.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert {row["accent"] for row in rows} == set(results["wer_by_group"])
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["wer"] == results["wer"] and "val_wer" in saved


def test_a_killed_speech_run_resumes_bit_identical(tmp_path, trained):
    _, full_results, full_params = trained
    first = Trainer(build_experiment(_config()), str(tmp_path / "resumed"), quiet=True)
    _crash_after(first, 10)  # latest checkpoint: step 8
    with pytest.raises(Interrupted):
        first.fit()
    first.checkpointer.wait()
    second = Trainer(build_experiment(_config()), str(tmp_path / "resumed"), quiet=True)
    resumed = second.fit()
    jax.tree.map(np.testing.assert_array_equal, _params(second.state), full_params)
    assert resumed["loss"] == full_results["loss"]


def _jaxdl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxdl", *args], capture_output=True, text=True, cwd=REPO
    )


def test_transcribe_prints_transcripts_and_names_unreadable_files(trained, tmp_path):
    workdir, _, _ = trained
    wav = os.path.join(SAMPLE, "wav", "test", "test_00000.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    done = _jaxdl("transcribe", "--workdir", str(workdir), wav, str(corrupt))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{wav}\t")
    assert "corrupt.wav" in done.stderr and "Traceback" not in done.stderr
    missing = _jaxdl("transcribe", "--workdir", str(tmp_path / "none"), wav)
    assert missing.returncode == 2 and "workdir not found" in missing.stderr


def test_evaluate_re_decodes_a_trained_run_with_decoder_overrides(trained, tmp_path):
    workdir, _, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    decoder = ("beam_width=4", "lm_unit='word'", "lm_order=2", "lm_weight=0.7")
    done = _jaxdl(
        "evaluate", "--workdir", str(copy), *(f"--config.task.decoder.{d}" for d in decoder)
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((copy / "results.json").read_text())
    assert results["report_decoder"] == "beam" and "wer_beam" in results
    rows = [json.loads(line) for line in (copy / "transcripts.jsonl").read_text().splitlines()]
    with open(os.path.join(SAMPLE, "train.tsv"), encoding="utf-8") as handle:
        lexicon = {w for row in csv.DictReader(handle, delimiter="\t") for w in row["text"].split()}
    # The word LM's lexicon holds every word a beam hypothesis has.
    assert all(set(row["hypotheses"]["beam"].split()) <= lexicon for row in rows)
    # The saved config is the trained one: only this evaluation decoded differently.
    assert json.loads((copy / "config.json").read_text()) == json.loads(
        (workdir / "config.json").read_text()
    )
    bad = _jaxdl("evaluate", "--workdir", str(copy), "--config.task.decoder.lm_unit='phone'")
    assert bad.returncode == 2 and "lm_unit" in bad.stderr and "Traceback" not in bad.stderr


def test_speech_decoding_benchmark_chooses_on_validation_and_scores_test(trained, tmp_path):
    workdir, results, _ = trained
    script = os.path.join(REPO, "benchmarks", "speech_decoding.py")
    out = tmp_path / "decoding.json"
    grid = ("--lms", "char3,word2", "--lm-weights", "0.5,1.0", "--word-bonuses", "0,1")
    done = subprocess.run(
        [
            sys.executable,
            script,
            "--workdir",
            str(workdir),
            "--beam-width",
            "4",
            "--out",
            str(out),
            *grid,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = {row["decoder"]: row for row in report["rows"]}
    assert list(rows) == ["greedy", "beam", "beam + char 3-gram LM", "beam + word 2-gram LM"]
    # The greedy row is what training's own evaluation measured on the same checkpoint.
    assert rows["greedy"]["test_wer"] == pytest.approx(results["wer"], abs=1e-4)
    for name in ("beam + char 3-gram LM", "beam + word 2-gram LM"):
        assert rows[name]["lm_weight"] in (0.5, 1.0) and rows[name]["word_bonus"] in (0.0, 1.0)
    best = min(report["rows"], key=lambda row: row["val_wer"])
    assert report["best_on_val"] == best["decoder"]
    accents = {k: v for k, v in report["test_wer_by_group"].items() if k.startswith("accent ")}
    assert sum(group["utterances"] for group in accents.values()) == results["utterances"]
    bad = subprocess.run(
        [sys.executable, script, "--workdir", str(workdir), "--lms", "phone2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "phone2" in bad.stderr
