"""Speech-recognition splits: audio manifests → fixed-shape CTC records.

Each split is an ``AudioManifestSource`` (CSV/TSV/JSONL of audio path + transcript) read lazily;
``CTCRecords`` turns an utterance into what the ``ctc`` task's batches hold: the waveform padded
to the longest utterance of the corpus (``audio`` float32 [max_samples], ``audio_length``) and the
transcript's character ids padded to the longest transcript (``labels`` int32 [max_label_len],
``label_length``). Features (log-mel, MFCC) are computed on device by the task, so augmentation
and the front end run inside the jitted step.

Transcripts are normalised (lower case, whitespace collapsed) and tokenised by a character
tokenizer fitted on the training transcripts: id 0 (the tokenizer's pad id) is CTC's blank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data.audio_sources import AudioManifestSource
from jaxdl.data.records import DataSplits, Record, RecordError
from jaxdl.data.text_sources import CharTokenizer
from jaxdl.errors import ConfigError, DataError

_SPACES = re.compile(r"\s+")


def normalize_transcript(text: Any) -> str:
    """Lower case, whitespace collapsed to single spaces, stripped."""
    return _SPACES.sub(" ", str(text)).strip().lower()


class CTCRecords:
    """``source``'s utterances as fixed-shape CTC records (see the module docstring).

    An utterance longer than ``max_samples`` or a transcript longer than ``max_label_len`` is a
    ``RecordError`` naming it (``data.on_error`` skips and counts it, or stops the run), as is
    an empty transcript: padding never silently truncates what the model is scored on.
    """

    def __init__(
        self,
        source: AudioManifestSource,
        tokenizer: CharTokenizer,
        max_samples: int,
        max_label_len: int,
    ):
        self.source, self.tokenizer = source, tokenizer
        self.max_samples, self.max_label_len = int(max_samples), int(max_label_len)

    def __len__(self) -> int:
        return len(self.source)

    def transcript(self, index: int) -> str:
        """The normalised reference transcript of utterance ``index`` (no audio decoded)."""
        return normalize_transcript(self.source.texts[index])

    def example_lengths(self) -> np.ndarray:
        """Samples per utterance at the model's rate, from file headers alone (for length
        bucketing); 0 for a file whose header cannot be read (judged when it is read)."""
        lengths = np.zeros(len(self.source), np.int64)
        for index in range(len(self.source)):
            try:
                seconds = self.source.duration_seconds(index)
            except RecordError:
                continue
            lengths[index] = math.ceil(seconds * self.source.sample_rate)
        return lengths

    def __getitem__(self, index: int) -> Record:
        record = self.source[index]
        where = self.source.describe(index)
        audio = np.asarray(record["audio"], np.float32)
        if audio.shape[0] > self.max_samples:
            raise RecordError(
                f"{where}: {audio.shape[0]} samples, more than the {self.max_samples} "
                "(data.options.max_seconds) batches hold"
            )
        text = normalize_transcript(record["text"])
        ids = self.tokenizer.encode(text)
        if not 0 < ids.shape[0] <= self.max_label_len:
            raise RecordError(
                f"{where}: transcript of {ids.shape[0]} characters; 1 to "
                f"{self.max_label_len} (data.options.max_label_len) fit"
            )
        padded_audio = np.zeros(self.max_samples, np.float32)
        padded_audio[: audio.shape[0]] = audio
        labels = np.zeros(self.max_label_len, np.int32)
        labels[: ids.shape[0]] = ids
        return {
            "audio": padded_audio,
            "audio_length": np.int32(audio.shape[0]),
            "labels": labels,
            "label_length": np.int32(ids.shape[0]),
        }

    def __repr__(self) -> str:
        return (
            f"CTCRecords({self.source!r}, {self.tokenizer!r}, max_samples={self.max_samples}, "
            f"max_label_len={self.max_label_len})"
        )


def _manifest_paths(directory: str, train: str, val: str, test: str) -> dict[str, Path]:
    """The three manifests: explicit paths, or ``{split}.tsv`` in ``directory``."""
    paths = {}
    for split, given in (("train", train), ("val", val), ("test", test)):
        if given:
            paths[split] = Path(given).expanduser()
        elif directory:
            paths[split] = Path(directory).expanduser() / f"{split}.tsv"
        else:
            raise ConfigError(
                "data 'speech_manifest' needs options.dir (holding train/val/test.tsv) or "
                "options.train, options.val and options.test manifest paths"
            )
        if not paths[split].is_file():
            hint = " (generate it with `make speech-corpus`)" if directory else ""
            raise DataError(f"{split} manifest {paths[split]} does not exist{hint}")
    return paths


def _longest_samples(sources: Sequence[AudioManifestSource], sample_rate: int) -> int:
    """The most samples any utterance of ``sources`` holds after resampling (file headers only;
    unreadable files are left for the records to report)."""
    longest = 0.0
    for source in sources:
        for index in range(len(source)):
            try:
                longest = max(longest, source.duration_seconds(index))
            except RecordError:
                continue
    return int(np.ceil(longest * sample_rate))


def load_speech_manifests(
    split_fractions: Sequence[float] = (),
    split_seed: int = 0,
    *,
    dir: str = "",  # noqa: A002 - the config option's name
    train: str = "",
    val: str = "",
    test: str = "",
    sample_rate: int = 16000,
    max_seconds: float = 0.0,
    max_label_len: int = 0,
    audio_column: str = "path",
    text_column: str = "text",
) -> DataSplits:
    """Train/val/test manifests (the splits are the manifests': ``split_fractions`` and
    ``split_seed`` do not apply) → ``CTCRecords`` splits and their ``info``.

    ``max_seconds`` / ``max_label_len`` bound the padded shapes; 0 takes the longest utterance
    and transcript of the three manifests (headers and manifest text only, nothing decoded).
    """
    del split_fractions, split_seed
    if sample_rate <= 0:
        raise ConfigError(f"data.options.sample_rate must be > 0, got {sample_rate}")
    paths = _manifest_paths(dir, train, val, test)
    columns = {"audio_column": audio_column, "text_column": text_column}
    sources = {
        split: AudioManifestSource(path, sample_rate=sample_rate, **columns)
        for split, path in paths.items()
    }
    train_texts = [normalize_transcript(text) for text in sources["train"].texts]
    if not any(train_texts):
        raise DataError(f"train manifest {paths['train']} has no transcripts")
    tokenizer = CharTokenizer.build(text for text in train_texts if text)
    longest_text = max(len(normalize_transcript(t)) for s in sources.values() for t in s.texts)
    label_len = int(max_label_len) or longest_text
    samples = (
        int(round(max_seconds * sample_rate))
        if max_seconds > 0
        else _longest_samples(list(sources.values()), sample_rate)
    )
    if samples <= 0:
        raise DataError(f"no readable audio in the manifests {sorted(map(str, paths.values()))}")
    records = {
        split: CTCRecords(source, tokenizer, samples, label_len)
        for split, source in sources.items()
    }
    space_id = int(tokenizer.encode(" ")[0]) if " " in tokenizer.vocabulary.chars else -1
    info = {
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "tokenizer": tokenizer,
        "blank_id": tokenizer.pad_id,
        "space_id": space_id,
        "sample_rate": int(sample_rate),
        "max_samples": samples,
        "max_label_len": label_len,
        "manifests": {split: str(path) for split, path in paths.items()},
    }
    return DataSplits(records["train"], records["val"], records["test"], info=info)


SPEECH_SPLIT_LOADERS = {"speech_manifest": load_speech_manifests}
