"""Lazy audio sources: the committed speech sample read back, resampling and downmixing, the
manifest formats, the 🤗 audiofolder layout, and bad input as one-line errors naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jaxdl.data.audio_sources import AudioManifestSource, hf_audio_folder_source
from jaxdl.data.record_errors import GuardedSource
from jaxdl.data.records import RecordError
from jaxdl.errors import DataError

SAMPLE = Path(__file__).parent / "data" / "speech"


def _tone(seconds: float, rate: int, hertz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hertz * t)).astype(np.float32)


def _peak_hertz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def _write_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_committed_sample_reads_back(split):
    source = AudioManifestSource(SAMPLE / f"{split}.tsv")
    assert len(source) >= 8
    for index in range(len(source)):
        record = source[index]
        audio = record["audio"]
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert 0.3 < len(audio) / 16000 < 6 and np.abs(audio).max() <= 1.0
        assert record["text"] and record["text"] == record["text"].lower()
        assert record["accent"] in record["speaker"] and int(record["rate"]) > 0
        assert sf.info(source.audio_path(index)).samplerate == 16000
        assert source.duration_seconds(index) == pytest.approx(len(audio) / 16000)


def test_resampling_keeps_length_and_pitch(tmp_path):
    sf.write(tmp_path / "tone.wav", _tone(1.0, 22050), 22050, subtype="PCM_16")
    _write_tsv(tmp_path / "m.tsv", [{"path": "tone.wav", "text": "a"}])
    source = AudioManifestSource(tmp_path / "m.tsv", sample_rate=16000)
    audio = source[0]["audio"]
    assert len(audio) == 16000
    assert _peak_hertz(audio, 16000) == pytest.approx(440.0, abs=2.0)
    assert source.duration_seconds(0) == pytest.approx(1.0)


def test_stereo_is_downmixed(tmp_path):
    left, right = _tone(0.5, 16000), np.zeros(8000, np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    _write_tsv(tmp_path / "m.tsv", [{"path": "st.wav", "text": "a"}])
    audio = AudioManifestSource(tmp_path / "m.tsv")[0]["audio"]
    assert audio.shape == (8000,)
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)


def test_jsonl_and_csv_manifests_with_absolute_paths(tmp_path):
    wav = tmp_path / "audio" / "a.wav"
    wav.parent.mkdir()
    sf.write(wav, _tone(0.25, 16000), 16000)
    line = {"audio": "audio/a.wav", "sentence": "hello", "rate": 150}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n\n")  # a blank line is skipped
    jsonl = AudioManifestSource(tmp_path / "m.jsonl", audio_column="audio", text_column="sentence")
    record = jsonl[0]
    assert record["text"] == "hello" and record["rate"] == 150 and len(record["audio"]) == 4000
    (tmp_path / "m.csv").write_text(f'path,text,speaker\n{wav},"hi, there",x\n')
    record = AudioManifestSource(tmp_path / "m.csv")[0]
    assert record["text"] == "hi, there" and record["speaker"] == "x"
    assert "AudioManifestSource" in repr(jsonl) and "n=1" in repr(jsonl)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)), "cannot decode"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "holds no samples"),
        (lambda p: None, "does not exist"),
    ],
    ids=["corrupt", "empty", "missing"],
)
def test_bad_audio_file_is_a_record_error_naming_it(tmp_path, write, match):
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, _tone(0.25, 16000), 16000)
    write(bad)
    rows = [{"path": "good.wav", "text": "a"}, {"path": "bad.wav", "text": "b"}]
    source = AudioManifestSource(_write_tsv(tmp_path / "m.tsv", rows))
    assert len(source[0]["audio"]) == 4000
    with pytest.raises(RecordError, match=match) as error:
        source[1]
    assert str(bad) in str(error.value)
    guarded = GuardedSource(source, "train", on_error="skip", max_error_fraction=0.9)
    assert guarded[1] is None and guarded.failures == 1
    with pytest.raises(DataError, match="bad.wav"):
        GuardedSource(source, "train")[1]


def test_empty_transcript_is_a_record_error(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.25, 16000), 16000)
    source = AudioManifestSource(_write_tsv(tmp_path / "m.tsv", [{"path": "a.wav", "text": " "}]))
    with pytest.raises(RecordError, match="a.wav has an empty transcript"):
        source[0]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("m.tsv", "path\tspeaker\na.wav\tx\n", "no column 'text'"),
        ("m.tsv", "path\ttext\n", "has no rows"),
        ("m.jsonl", '{"path": "a.wav"\n', "line 1 is not JSON"),
        ("m.txt", "a.wav hello\n", "must end in one of"),
        ("absent.csv", None, "does not exist"),
    ],
    ids=["no-text-column", "no-rows", "bad-json", "extension", "missing"],
)
def test_unusable_manifest_is_a_data_error_naming_it(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match) as error:
        AudioManifestSource(tmp_path / name)
    assert name in str(error.value) and "\n" not in str(error.value)


def test_audiofolder_split_reads_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for split, hertz in [("train", 300.0), ("test", 500.0)]:
        folder = tmp_path / "folder" / split
        folder.mkdir(parents=True)
        sf.write(folder / "a.wav", _tone(0.5, 8000, hertz), 8000, subtype="PCM_16")
        (folder / "metadata.csv").write_text(f"file_name,transcription,speaker\na.wav,{split},7\n")
    cache = str(tmp_path / "cache")
    source = hf_audio_folder_source(tmp_path / "folder", "test", cache_dir=cache)
    record = source[0]
    assert len(source) == 1 and record["text"] == "test" and record["speaker"] == "7"
    assert len(record["audio"]) == 8000 and source.duration_seconds(0) == pytest.approx(0.5)
    assert _peak_hertz(record["audio"], 16000) == pytest.approx(500.0, abs=3.0)
    with pytest.raises(DataError, match="no such split"):
        hf_audio_folder_source(tmp_path / "folder", "val", cache_dir=cache)
    with pytest.raises(DataError, match="no column 'text'"):
        hf_audio_folder_source(tmp_path / "folder", text_column="text", cache_dir=cache)
