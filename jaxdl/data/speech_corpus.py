"""A synthesised English speech corpus (espeak-ng + sox) whose test split measures recognition.

Transcripts are single words (the ten digits and 40 commands), digit strings ("three one four")
and 3-7 word sentences from a seeded grammar over about 350 words. Every transcript belongs to
one split only: val and test hold word sequences (sentences, digit strings, single words) never
spoken in training, while each of their words is spoken in training, so a character model can in
principle get them. Val is drawn like train (training accents and voice settings). Test is four
equal parts: training accents with training settings, accents never used in training, speaking
rate and/or pitch outside the training ranges, and both. A share of every split has background
noise (sox white, pink or brown noise) at 10-30 dB SNR.

The layout is ``DIR/{train,val,test}.tsv`` (``path`` relative to DIR, ``text``, ``speaker``,
``accent``, ``rate``, ``pitch``, ``noise_snr``), 16-bit mono WAV under ``DIR/wav/`` and
``DIR/corpus.json`` (settings, counts, accents per split, tool versions). The plan is a function
of the seed and sizes alone; the audio bytes also depend on the espeak-ng version. A corpus is
written to a hidden folder beside DIR and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from jaxdl.errors import ConfigError, DataError, UserError

logger = logging.getLogger("jaxdl")

GENERATOR_VERSION = 1
DEFAULT_OUT = Path("~/.cache/jaxdl/speech_corpus_v1")
# Utterances per split: about 1.8 hours of training speech, 1-3 s an utterance.
DEFAULT_SIZES = {"train": 4000, "val": 400, "test": 400}
MANIFEST_COLUMNS = ("path", "text", "speaker", "accent", "rate", "pitch", "noise_snr")
INSTALL_HINT = "apt-get install espeak-ng sox (`make speech-corpus` installs them)"

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = (
    "up", "down", "left", "right", "stop", "go", "yes", "no", "on", "off",
    "open", "close", "start", "play", "pause", "next", "back", "forward", "louder", "quieter",
    "faster", "slower", "cancel", "repeat", "help", "skip", "mute", "resume", "record", "save",
    "select", "undo", "reset", "shuffle", "wait", "finish", "begin", "enter", "exit", "follow",
)  # fmt: skip
# Single words spoken alone only in val or test (they occur inside training sentences).
HELD_OUT_WORDS = {"test": 8, "val": 6}

# espeak-ng accents (``espeak-ng --voices=en``) and voice variants (``--voices=variant``).
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
TEST_ONLY_ACCENTS = ("en-gb-scotland", "en-us-nyc")
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3",
    "f4", "f5", "klatt", "klatt2", "klatt3", "john", "linda", "steph", "david", "belinda",
)  # fmt: skip
TRAIN_RATE = (140, 200)  # words per minute (espeak-ng -s)
TRAIN_PITCH = (30, 70)  # espeak-ng -p, 0-99
TEST_RATES_OUT = ((105, 125), (215, 240))
TEST_PITCHES_OUT = ((5, 20), (80, 95))
AMPLITUDE = (40, 80)  # espeak-ng -a (100 is its default); louder voices clip
NOISE_FRACTION = 0.3
NOISE_SNR_DB = (10.0, 30.0)
NOISE_TYPES = ("whitenoise", "pinknoise", "brownnoise")
NOISE_BED_SECONDS = 30
KIND_FRACTIONS = {"word": 0.15, "digits": 0.25}  # the rest are sentences
SENTENCE_WORDS = (3, 7)

SLOTS = {
    "room": "kitchen bedroom bathroom garage office hallway garden basement attic nursery study "
    "porch living_room dining_room laundry_room",
    "device": "light lamp fan heater radio television oven kettle speaker alarm camera printer "
    "computer dishwasher projector toaster microwave sprinkler",
    "opening": "door window blinds curtains gate cupboard drawer shutters",
    "colour": "red blue green yellow black white orange purple pink brown grey silver gold",
    "object": "box ball cup book chair bottle bag key phone plate pen block card shoe hat coin "
    "brick pencil spoon basket bucket candle clock ribbon jar",
    "place": "left right top bottom middle front back corner edge side",
    "surface": "shelf floor desk table counter bed sofa stool tray bench carpet",
    "number": " ".join(DIGITS) + " ten eleven twelve fifteen twenty thirty forty fifty sixty",
    "hour": " ".join(DIGITS[1:]) + " ten eleven twelve",
    "unit": "seconds minutes hours",
    "media": "music song playlist podcast news video movie album story audiobook episode "
    "recording show",
    "mediaverb": "start stop play pause resume record skip mute shuffle save repeat cancel select",
    "speed": "louder quieter faster slower",
    "genre": "jazz rock classical piano guitar folk blues country reggae dance",
    "person": "anna david maria peter sarah james emma lucas olivia daniel sophie thomas mum dad",
    "day": "monday tuesday wednesday thursday friday saturday sunday today tomorrow tonight",
    "city": "london paris berlin tokyo boston chicago dublin madrid sydney toronto rome vienna "
    "oslo cairo lisbon denver",
    "food": "milk bread eggs cheese coffee tea rice butter sugar apples bananas tomatoes onions "
    "carrots pasta soup juice flour honey lemons",
    "animal": "cat dog bird fish horse cow rabbit duck goat mouse sheep pig",
    "state": "hungry sleepy happy tired quiet hiding outside asleep awake lost",
    "size": "big small large tiny little tall round heavy empty old new",
    "move": "move push slide drag roll carry bring",
    "handle": "find clean hide grab lift drop wash paint",
    "direction": "up down left right forward back",
    "onoff": "on off",
    "openclose": "open close",
    "yesno": "yes no",
    "weather": "sunny cold warm windy cloudy",
    "precipitation": "rain snow",
    "activity": "game lesson workout quiz meeting",
    "activityverb": "begin finish exit",
    "change": "change step move edit",
    "status": "late home outside coming ready",
    "appliance": "heater oven fridge freezer thermostat",
}
TEMPLATES = (
    "turn the {room} {device} {onoff}",
    "turn {onoff} the {device}",
    "switch {onoff} the {device} in the {room}",
    "{openclose} the {room} {opening}",
    "{openclose} the {opening}",
    "set a timer for {number} {unit}",
    "set the {appliance} to {number} degrees",
    "wake me up at {hour} {day}",
    "set an alarm for {hour} {day}",
    "{move} the {colour} {object} to the {place}",
    "put the {size} {object} on the {surface}",
    "{handle} the {size} {colour} {object}",
    "{handle} the {object} under the {surface}",
    "go {direction} {number} steps",
    "{mediaverb} the {media}",
    "play the next {media}",
    "go back to the previous {media}",
    "make the {media} {speed}",
    "play some {genre} music",
    "play {genre} music in the {room}",
    "call {person} {day}",
    "send a message to {person}",
    "tell {person} i am {status}",
    "say {yesno} to {person}",
    "wait for {person} in the {room}",
    "what is the weather in {city}",
    "is it {weather} in {city} {day}",
    "will it {precipitation} in {city} {day}",
    "add {food} to the shopping list",
    "add {food} and {food2} to the list",
    "remind me to buy {food} {day}",
    "the {colour} {animal} is {state}",
    "the {size} {animal} is {state}",
    "follow the {colour} {animal}",
    "help me find the {size} {object}",
    "show me the {colour} {object}",
    "undo the last {change}",
    "reset the {device}",
    "{activityverb} the {activity}",
    "enter the {room}",
)
SPLITS = ("train", "val", "test")


def _slot_values(name: str) -> tuple[str, ...]:
    """The fillers of slot ``name`` ('food2' is a second 'food'; '_' joins multi-word ones)."""
    return tuple(value.replace("_", " ") for value in SLOTS[name.rstrip("0123456789")].split())


def _template_slots(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def grammar_vocabulary() -> set[str]:
    """Every word the sentence grammar can produce."""
    words: set[str] = set()
    for template in TEMPLATES:
        words.update(word for word in template.split() if not word.startswith("{"))
        for slot in _template_slots(template):
            words.update(word for value in _slot_values(slot) for word in value.split())
    return words


def _words(texts: Sequence[str]) -> set[str]:
    return {word for text in texts for word in text.split()}


def _cycle(items: Sequence[str], count: int) -> list[str]:
    return [items[i % len(items)] for i in range(count)] if items else []


def _sentence(rng: np.random.Generator) -> str:
    """One sentence of SENTENCE_WORDS words from a random template with random fillers."""
    while True:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        fillers = {}
        for slot in _template_slots(template):
            values = _slot_values(slot)
            fillers[slot] = values[rng.integers(len(values))]
        text = template.format(**fillers)
        distinct = len(set(fillers.values())) == len(fillers)  # not "add tea and tea"
        if distinct and SENTENCE_WORDS[0] <= len(text.split()) <= SENTENCE_WORDS[1]:
            return text


def _sentence_pool(rng: np.random.Generator, count: int) -> list[str]:
    """Up to ``count`` distinct sentences in the order drawn."""
    pool: dict[str, None] = {}
    for _ in range(50 * count):
        pool.setdefault(_sentence(rng), None)
        if len(pool) == count:
            break
    return list(pool)


def _covering(pool: Sequence[str], missing: set[str], count: int) -> list[str]:
    """``count`` sentences of ``pool``: first ones that speak the ``missing`` words (for the
    rarest word still missing, the sentence with it that speaks the most missing words), then
    the rest in pool order."""
    word_sets = {text: set(text.split()) for text in pool}
    chosen: list[str] = []
    missing = set(missing)
    while missing and len(chosen) < count:
        having = {word: [t for t in pool if word in word_sets[t]] for word in sorted(missing)}
        having = {word: texts for word, texts in having.items() if texts}
        if not having:
            break
        rarest = min(having, key=lambda word: len(having[word]))
        best = max(having[rarest], key=lambda text: len(word_sets[text] & missing))
        chosen.append(best)
        missing -= word_sets[best]
    taken = set(chosen)
    return chosen + [text for text in pool if text not in taken][: count - len(chosen)]


def _kind_counts(size: int) -> dict[str, int]:
    counts = {kind: round(size * fraction) for kind, fraction in KIND_FRACTIONS.items()}
    return {**counts, "sentence": size - sum(counts.values())}


def _digit_strings(rng: np.random.Generator, counts: dict[str, int]) -> dict[str, list[str]]:
    """Distinct strings of 2-5 spoken digits per split, none shared between splits."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        out[split] = []
        while len(out[split]) < counts[split]:
            digits = rng.integers(0, 10, rng.integers(2, 6))
            text = " ".join(DIGITS[d] for d in digits)
            if text not in seen:
                seen.add(text)
                out[split].append(text)
    return out


def _plan_texts(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, list[str]]:
    """The transcripts of each split, shuffled. No transcript is in two splits; every word of
    val and test is spoken in train (else a ``DataError``: train is too small)."""
    counts = {split: _kind_counts(size) for split, size in sizes.items()}
    singles = [str(word) for word in rng.permutation(DIGITS + COMMANDS)]
    n_test, n_val = HELD_OUT_WORDS["test"], HELD_OUT_WORDS["val"]
    held = {
        "test": singles[:n_test],
        "val": singles[n_test : n_test + n_val],
        "train": singles[n_test + n_val :],
    }
    digit_strings = _digit_strings(rng, {split: counts[split]["digits"] for split in SPLITS})
    texts = {
        split: _cycle(held[split], counts[split]["word"]) + digit_strings[split] for split in SPLITS
    }
    # Training sentences first speak the held-out single words and digits; val and test
    # sentences are then drawn from those whose every word training speaks.
    wanted = {split: counts[split]["sentence"] for split in SPLITS}
    pool = _sentence_pool(rng, 2 * sum(wanted.values()) + 2000)
    needed = _words(texts["val"] + texts["test"]) - _words(texts["train"])
    sentences = {"train": _covering(pool, needed, wanted["train"])}
    heard = _words(texts["train"] + sentences["train"])
    taken = set(sentences["train"])
    spare = [text for text in pool if text not in taken and _words([text]) <= heard]
    sentences["test"] = _cycle(spare[: wanted["test"]], wanted["test"])
    sentences["val"] = _cycle(spare[wanted["test"] :][: wanted["val"]], wanted["val"])
    for split in SPLITS:
        texts[split] += sentences[split]
    unheard = _words(texts["val"] + texts["test"]) - heard
    if unheard or any(len(texts[split]) != sizes[split] for split in SPLITS):
        missing = f" (missing: {' '.join(sorted(unheard))})" if unheard else ""
        raise DataError(
            f"train_size={sizes['train']} is too small to speak every word of val and test"
            f"{missing}; raise it"
        )
    return {
        split: [texts[split][i] for i in rng.permutation(len(texts[split]))] for split in SPLITS
    }


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One planned recording: what is said, by which voice, with which background noise."""

    path: str
    text: str
    accent: str
    variant: str
    rate: int
    pitch: int
    amplitude: int
    noise: str  # a NOISE_TYPES entry, '' for clean speech
    snr_db: float | None
    noise_start: float  # where the noise excerpt starts, in [0, 1) of the bed's spare length

    @property
    def speaker(self) -> str:
        return f"{self.accent}+{self.variant}"

    def row(self) -> tuple[str, ...]:
        snr = "" if self.snr_db is None else f"{self.snr_db:.1f}"
        return (
            self.path,
            self.text,
            self.speaker,
            self.accent,
            str(self.rate),
            str(self.pitch),
            snr,
        )


def _uniform(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _plan_voices(rng: np.random.Generator, split: str, texts: list[str]) -> list[Utterance]:
    """A voice and noise for each text. Test utterance ``i`` uses an accent never used in
    training when i is odd and a rate and/or pitch outside the training ranges when i % 4 >= 2."""
    utterances = []
    for index, text in enumerate(texts):
        unseen_accent = split == "test" and index % 2 == 1
        out_of_range = split == "test" and index % 4 >= 2
        accents = TEST_ONLY_ACCENTS if unseen_accent else TRAIN_ACCENTS
        rate, pitch = _uniform(rng, TRAIN_RATE), _uniform(rng, TRAIN_PITCH)
        if out_of_range:
            which = rng.integers(3)  # 0: rate, 1: pitch, 2: both
            if which != 1:
                rate = _uniform(rng, TEST_RATES_OUT[rng.integers(2)])
            if which != 0:
                pitch = _uniform(rng, TEST_PITCHES_OUT[rng.integers(2)])
        noisy = rng.random() < NOISE_FRACTION
        utterances.append(
            Utterance(
                path=f"wav/{split}/{split}_{index:05d}.wav",
                text=text,
                accent=accents[rng.integers(len(accents))],
                variant=VARIANTS[rng.integers(len(VARIANTS))],
                rate=rate,
                pitch=pitch,
                amplitude=_uniform(rng, AMPLITUDE),
                noise=NOISE_TYPES[rng.integers(len(NOISE_TYPES))] if noisy else "",
                snr_db=round(float(rng.uniform(*NOISE_SNR_DB)), 1) if noisy else None,
                noise_start=float(rng.random()),
            )
        )
    return utterances


def plan_corpus(seed: int, sizes: dict[str, int]) -> dict[str, list[Utterance]]:
    """Every utterance of every split, a function of ``seed`` and ``sizes`` alone."""
    rng = np.random.default_rng(seed)
    texts = _plan_texts(rng, sizes)
    return {split: _plan_voices(rng, split, texts[split]) for split in SPLITS}


def _run(command: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run(command, input=stdin, capture_output=True)
    if result.returncode:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(
            f"{' '.join(command[:3])} ... failed (exit {result.returncode})"
            + (f": {message[-1]}" if message else "")
        )
    return result.stdout


def tool_versions() -> dict[str, str]:
    """The espeak-ng and sox versions; a one-line ``UserError`` when either is missing or
    espeak-ng lacks an accent or voice variant the corpus uses."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise UserError(
                f"the speech corpus needs {tool}, which is not installed: {INSTALL_HINT}"
            )
    accents = set(_run(["espeak-ng", "--voices=en"]).decode().split())
    listed = _run(["espeak-ng", "--voices=variant"]).decode().split()
    variants = {token.removeprefix("!v/") for token in listed}
    missing = [a for a in TRAIN_ACCENTS + TEST_ONLY_ACCENTS if a not in accents]
    missing += [variant for variant in VARIANTS if variant not in variants]
    if missing:
        raise UserError(f"espeak-ng lacks the voices {missing} that the speech corpus uses")
    espeak = _run(["espeak-ng", "--version"]).decode()
    sox = _run(["sox", "--version"]).decode()
    version = re.search(r"text-to-speech:\s*(\S+)", espeak)
    return {
        "espeak-ng": version.group(1) if version else espeak.strip(),
        "sox": sox.strip().split()[-1] if sox.strip() else "",
    }


def _raw_float(sample_rate: int) -> list[str]:
    """sox's output options for headerless little-endian float32 mono at ``sample_rate``."""
    return [
        "-t",
        "raw",
        "-e",
        "floating-point",
        "-b",
        "32",
        "-L",
        "-c",
        "1",
        "-r",
        str(sample_rate),
    ]


def _noise_beds(sample_rate: int) -> dict[str, np.ndarray]:
    """NOISE_BED_SECONDS of each noise type from sox's seeded (-R) generator, float32."""
    raw = _raw_float(sample_rate)
    return {
        kind: np.frombuffer(
            _run(["sox", "-R", "-n", *raw, "-", "synth", str(NOISE_BED_SECONDS), kind]), "<f4"
        )
        for kind in NOISE_TYPES
    }


def _add_noise(speech: np.ndarray, bed: np.ndarray, snr_db: float, start: float) -> np.ndarray:
    """``speech`` plus an excerpt of ``bed`` scaled to ``snr_db`` (mean powers over the clip)."""
    bed = np.resize(bed, max(len(bed), len(speech)))
    offset = int(start * (len(bed) - len(speech)))
    noise = bed[offset : offset + len(speech)].astype(np.float64)
    speech64 = speech.astype(np.float64)
    gain = np.sqrt(np.mean(speech64**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return (speech64 + gain * noise).astype(np.float32)


def _synthesise(
    utterance: Utterance, root: Path, sample_rate: int, beds: dict[str, np.ndarray]
) -> int:
    """Speaks one utterance into ``root / utterance.path``; returns its number of samples."""
    u = utterance
    voice = ["-v", u.speaker, "-s", str(u.rate), "-p", str(u.pitch), "-a", str(u.amplitude)]
    wav = _run(["espeak-ng", *voice, "--stdout", u.text])
    raw = _raw_float(sample_rate)
    speech = np.frombuffer(_run(["sox", "-R", "-t", "wav", "-", *raw, "-"], wav), "<f4")
    if not speech.any():
        raise DataError(f"espeak-ng produced no sound for {u.speaker} saying {u.text!r}")
    if u.noise:
        speech = _add_noise(speech, beds[u.noise], u.snr_db, u.noise_start)
    sf.write(root / u.path, np.clip(speech, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return len(speech)


def _synthesise_all(
    plan: dict[str, list[Utterance]], root: Path, sample_rate: int, jobs: int
) -> dict[str, int]:
    """Writes every utterance with ``jobs`` espeak-ng/sox pipelines at a time; returns the
    number of samples per split."""
    beds = _noise_beds(sample_rate)
    for split in plan:
        (root / "wav" / split).mkdir(parents=True)
    work = [(split, u) for split in SPLITS for u in plan[split]]
    samples = dict.fromkeys(SPLITS, 0)
    pool = ThreadPoolExecutor(jobs)
    try:
        results = pool.map(lambda item: _synthesise(item[1], root, sample_rate, beds), work)
        for done, ((split, _), count) in enumerate(zip(work, results, strict=True), 1):
            samples[split] += count
            if done % max(1, len(work) // 10) == 0:
                logger.info("speech corpus: %d of %d utterances", done, len(work))
    finally:
        pool.shutdown(cancel_futures=True)
    return samples


def _write_manifests(plan: dict[str, list[Utterance]], root: Path) -> None:
    for split, utterances in plan.items():
        with open(root / f"{split}.tsv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(u.row() for u in utterances)


def _description(
    settings: dict, plan: dict[str, list[Utterance]], samples: dict[str, int], tools: dict
) -> dict:
    """What ``corpus.json`` says: the settings, per-split facts and the design's constants."""
    texts = {split: [u.text for u in plan[split]] for split in SPLITS}
    return {
        "settings": settings,
        "counts": {split: len(plan[split]) for split in SPLITS},
        "hours": {
            split: round(samples[split] / settings["sample_rate"] / 3600, 3) for split in SPLITS
        },
        "distinct_transcripts": {split: len(set(texts[split])) for split in SPLITS},
        "vocabulary_size": {split: len(_words(texts[split])) for split in SPLITS},
        "accents": {split: sorted({u.accent for u in plan[split]}) for split in SPLITS},
        "variants": list(VARIANTS),
        "train_ranges": {"rate": list(TRAIN_RATE), "pitch": list(TRAIN_PITCH)},
        "test_out_of_range": {
            "rate": [list(r) for r in TEST_RATES_OUT],
            "pitch": [list(r) for r in TEST_PITCHES_OUT],
        },
        "amplitude": list(AMPLITUDE),
        "noise": {
            "fraction": NOISE_FRACTION,
            "snr_db": list(NOISE_SNR_DB),
            "types": list(NOISE_TYPES),
        },
        "tools": tools,
    }


def _complete(out: Path, settings: dict) -> bool:
    """True when ``out`` holds a corpus made with ``settings``; a ``DataError`` when it holds
    anything else."""
    description = out / "corpus.json"
    if description.is_file():
        found = json.loads(description.read_text()).get("settings")
        if found == settings:
            return True
        raise DataError(
            f"{out} holds a speech corpus made with other settings ({found}); delete it or "
            "choose another output folder"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a speech corpus; choose another output folder")
    return False


def generate_corpus(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    train_size: int = DEFAULT_SIZES["train"],
    val_size: int = DEFAULT_SIZES["val"],
    test_size: int = DEFAULT_SIZES["test"],
    jobs: int = 2,
) -> Path:
    """Writes the corpus to ``out_dir`` (returned) unless it already holds one made with these
    settings."""
    out = Path(out_dir).expanduser()
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    if min(sizes.values()) < 1 or test_size < 4 or jobs < 1 or sample_rate < 1:
        raise ConfigError(
            f"speech corpus sizes must be >= 1 (test >= 4), jobs and sample_rate >= 1; got "
            f"{sizes}, jobs={jobs}, sample_rate={sample_rate}"
        )
    settings = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sample_rate": sample_rate,
        "sizes": sizes,
    }
    if _complete(out, settings):
        logger.info("speech corpus: %s is complete", out)
        return out
    tools = tool_versions()
    plan = plan_corpus(seed, sizes)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        work.chmod(0o755)
        samples = _synthesise_all(plan, work, sample_rate, jobs)
        _write_manifests(plan, work)
        description = _description(settings, plan, samples, tools)
        (work / "corpus.json").write_text(json.dumps(description, indent=2) + "\n")
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxdl.data.speech_corpus --out DIR``: generates the corpus."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxdl.data.speech_corpus",
        description="Synthesise the espeak-ng speech corpus (needs espeak-ng and sox).",
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    for split, size in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}-size", type=int, default=size)
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng/sox pipelines")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.INFO)
    start = time.monotonic()
    out = generate_corpus(
        args.out,
        seed=args.seed,
        sample_rate=args.sample_rate,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        jobs=args.jobs,
    )
    counts = json.loads((out / "corpus.json").read_text())["counts"]
    print(f"speech corpus in {out}: {counts} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        sys.stderr.write(f"{error.prefix}{error}\n")
        sys.exit(error.exit_code)
