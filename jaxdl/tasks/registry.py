"""Task registry: ``config.task.name`` → a builder that fills the task from the config and data."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

from jaxdl.data.augment import make_augmenter
from jaxdl.data.records import DataSplits
from jaxdl.data.split import class_weights as balanced_class_weights
from jaxdl.data.views import source_labels
from jaxdl.errors import ConfigError, DataError
from jaxdl.tasks.base import Task
from jaxdl.tasks.classification import ImageClassification, SequenceClassification
from jaxdl.tasks.ctc import CTCSpeechRecognition
from jaxdl.tasks.language_modeling import LanguageModeling
from jaxdl.tasks.masked_lm import MaskedLanguageModeling
from jaxdl.tasks.segmentation import SemanticSegmentation

TaskBuilder = Callable[[ml_collections.ConfigDict, DataSplits, ml_collections.ConfigDict], Task]

_REGISTRY: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Registers ``builder(task_config, data, config) -> Task`` under ``name``."""

    def decorator(builder: TaskBuilder) -> TaskBuilder:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def build_task(config: ml_collections.ConfigDict, data: DataSplits) -> Task:
    """The task of ``config.task`` for ``data``; checks that the data's records fit the task."""
    task_config = config.get("task") or ml_collections.ConfigDict({"name": "image_classification"})
    name = task_config.get("name")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task.name {name!r}; available: {available_tasks()}")
    task = _REGISTRY[name](task_config, data, config)
    for split in ("train", "val", "test"):
        source = data.get(split)
        if len(source) == 0:
            raise DataError(f"the {split} split is empty")
        task.check_record(source[0], f"{split} split")
    return task


def _first(data: DataSplits, field: str, task: str) -> np.ndarray:
    record = data.train[0]
    if field not in record:
        raise DataError(f"task {task!r} needs field {field!r}; records have {sorted(record)}")
    return np.asarray(record[field])


def _class_names(data: DataSplits) -> list[str] | None:
    names = data.info.get("class_names")
    if names is None and data.info.get("num_classes"):
        names = [str(i) for i in range(int(data.info["num_classes"]))]
    return names


@register_task("image_classification")
def _image_classification(task_config, data, config) -> Task:
    return _classification(
        ImageClassification,
        input_shape=_first(data, "inputs", "image_classification").shape,
        class_names=_class_names(data),
        label_smoothing=float(task_config.get("label_smoothing", 0.0)),
        augment=make_augmenter(config.get("augment", ml_collections.ConfigDict())),
        **_imbalance_options(task_config, data),
    )


@register_task("sequence_classification")
def _sequence_classification(task_config, data, config) -> Task:
    del config
    return _classification(
        SequenceClassification,
        max_len=_first(data, "tokens", "sequence_classification").shape[0],
        class_names=_class_names(data),
        label_smoothing=float(task_config.get("label_smoothing", 0.0)),
        pad_id=int(data.info.get("pad_id", 0)),
        **_imbalance_options(task_config, data),
    )


def _classification(task_class: type[Task], **kwargs) -> Task:
    """``task_class(**kwargs)``, its ValueErrors (bad config values) as one-line ConfigErrors."""
    try:
        return task_class(**kwargs)
    except ValueError as error:
        raise ConfigError(f"task {task_class.name}: {error}") from None


def _imbalance_options(task_config: ml_collections.ConfigDict, data: DataSplits) -> dict:
    """``class_weights`` and ``focal_gamma`` of the classification tasks from ``task_config``.

    ``task.class_weights``: None (off), ``'balanced'`` (``n / (k * count_c)`` over the train
    split's labels, as scikit-learn's ``compute_class_weight``; classes absent from the split get
    0) or one weight per class. ``task.focal_gamma``: the focal exponent (0: cross-entropy).
    """
    setting = task_config.get("class_weights", None)
    gamma = task_config.get("focal_gamma", None)
    if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, int | float)):
        raise ConfigError(f"task.focal_gamma must be a number >= 0, got {gamma!r}")
    options = {"focal_gamma": float(gamma or 0.0)}
    if setting is None or (isinstance(setting, str) and setting.lower() in ("", "none")):
        return {**options, "class_weights": None}
    if isinstance(setting, str):
        if setting != "balanced":
            raise ConfigError(
                f"task.class_weights must be 'balanced', a list of per-class weights or None; "
                f"got {setting!r}"
            )
        labels = _train_labels(data)
        names = _class_names(data)
        num_classes = len(names) if names else int(labels.max()) + 1
        return {**options, "class_weights": balanced_class_weights(labels, num_classes)}
    try:
        weights = [float(w) for w in setting]
    except (TypeError, ValueError):
        raise ConfigError(
            f"task.class_weights must be 'balanced', a list of per-class weights or None; "
            f"got {setting!r}"
        ) from None
    return {**options, "class_weights": weights}


def _train_labels(data: DataSplits) -> np.ndarray:
    """The train split's class labels: known by the source, else read record by record."""
    labels = source_labels(data.train)
    if labels is None:
        labels = np.asarray([int(data.train[i]["labels"]) for i in range(len(data.train))])
    return labels.astype(np.int64)


@register_task("segmentation")
def _segmentation(task_config, data, config) -> Task:
    """Per-pixel labels [H, W] of the data's classes; ``task.dice_weight`` adds soft Dice,
    ``task.max_shift`` / ``task.flip_left_right`` / ``task.rotate_degrees`` /
    ``task.scale_range`` (low, high) / ``task.crop`` (pixels) augment image and mask jointly (the
    image filled with the standardised value of a black pixel, the mask with background;
    ``task.interpolation`` 'bilinear' or 'nearest' resamples the image). ``task.ignore_index``
    (default: the data's, ``data.options.ignore_index`` of the mask sources) is a label whose
    pixels count nowhere (augmentation fills the mask with it instead of background)."""
    del config
    names = _class_names(data)
    if not names:
        raise DataError("task 'segmentation' needs data with num_classes or class_names")
    ignore_index = task_config.get("ignore_index", None)
    data_ignore = data.info.get("ignore_index")
    if ignore_index is None:
        ignore_index = data_ignore
    elif data_ignore is not None and ignore_index != data_ignore:
        raise ConfigError(
            f"task.ignore_index={ignore_index!r} but the data's ignore label is {data_ignore} "
            "(data.options.ignore_index); set them alike or drop task.ignore_index"
        )
    return _classification(
        SemanticSegmentation,
        input_shape=_first(data, "inputs", "segmentation").shape,
        num_classes=len(names),
        class_names=names,
        dice_weight=float(task_config.get("dice_weight", 0.0)),
        max_shift=int(task_config.get("max_shift", 0)),
        flip_left_right=bool(task_config.get("flip_left_right", False)),
        rotate_degrees=_number(task_config, "rotate_degrees", 0.0),
        scale_range=task_config.get("scale_range", (1.0, 1.0)),
        crop=task_config.get("crop", 0),
        interpolation=task_config.get("interpolation", "bilinear"),
        ignore_index=ignore_index,
        fill=-np.asarray(data.info.get("channel_mean", 0.0), np.float32)
        / np.asarray(data.info.get("channel_std", 1.0), np.float32),
    )


def _number(task_config: ml_collections.ConfigDict, key: str, default: float) -> float:
    value = task_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"task.{key} must be a number, got {value!r}")
    return float(value)


@register_task("language_modeling")
def _language_modeling(task_config, data, config) -> Task:
    """Packed rows (segment_ids/positions fields) when the data says so: packed data sets
    ``info['packed'] = True`` and ``info['seq_len']`` (its records may be documents the loader
    packs). ``task.packed`` defaults to that and may only repeat it."""
    del config
    data_packed = bool(data.info.get("packed", False))
    packed = task_config.get("packed", None)
    if packed is not None and bool(packed) != data_packed:
        raise ConfigError(
            f"task.packed={bool(packed)} but the data is "
            f"{'packed' if data_packed else 'not packed'} (data.info['packed']={data_packed})"
        )
    if data_packed:
        if "seq_len" not in data.info:
            raise DataError("packed language-modelling data must set info['seq_len']")
        seq_len = int(data.info["seq_len"])
    else:
        seq_len = _first(data, "tokens", "language_modeling").shape[0] - 1
    return LanguageModeling(
        seq_len=seq_len,
        unigram_counts=data.info.get("unigram_counts"),
        pad_id=int(data.info.get("pad_id", 0)),
        packed=data_packed,
    )


@register_task("masked_lm")
def _masked_lm(task_config, data, config) -> MaskedLanguageModeling:
    """The data's tokenizer gives the mask token and the special ids (never selected, and below
    every random replacement); ``task.mask_rate`` / ``replace_with_mask`` /
    ``replace_with_random`` default to BERT's 0.15 / 0.8 / 0.1."""
    del config
    tokenizer = data.info.get("tokenizer")
    mask_id = getattr(tokenizer, "mask_id", None)
    if mask_id is None:
        raise ConfigError(
            f"task masked_lm needs a tokenizer with a mask token; the data's tokenizer "
            f"{tokenizer!r} has none (set data.options.tokenizer to one that has: "
            f"bpe, wordpiece, unigram or word)"
        )
    specials = [
        int(i)
        for i in (getattr(tokenizer, name, None) for name in ("pad_id", "unk_id", "cls_id"))
        if i is not None
    ]
    return MaskedLanguageModeling(
        max_len=_first(data, "tokens", "masked_lm").shape[0],
        vocab_size=int(data.info.get("vocab_size", tokenizer.vocab_size)),
        mask_id=int(mask_id),
        pad_id=int(data.info.get("pad_id", 0)),
        special_ids=[i for i in specials if i != getattr(tokenizer, "unk_id", None)],
        first_regular_id=max([*specials, int(mask_id)]) + 1,
        mask_rate=float(task_config.get("mask_rate", 0.15)),
        replace_with_mask=float(task_config.get("replace_with_mask", 0.8)),
        replace_with_random=float(task_config.get("replace_with_random", 0.1)),
    )


@register_task("ctc")
def _ctc(task_config, data, config) -> CTCSpeechRecognition:
    """Speech data (``speech_manifest``) gives the padded shapes, the sample rate and the
    tokenizer; ``task.front_end`` sets ``FrontEndConfig`` fields (its sample rate is the
    data's), ``task.spec_augment`` SpecAugment's keywords and ``task.waveform_augment``
    ``perturb_waveforms``' (absent or empty: off); ``task.decoder`` adds prefix beam search
    (``beam_width``) with an n-gram LM of the training transcripts (``lm_order``; ``lm_unit``
    'char', or 'word' for a lexicon-constrained word LM; ``lm_weight``, ``word_bonus``;
    ``token_min_log_prob`` prunes unlikely labels per frame) to the final report."""
    del config
    from jaxdl.audio import FrontEndConfig

    info = data.info
    for key in ("max_samples", "max_label_len", "sample_rate"):
        if key not in info:
            raise DataError(f"task 'ctc' needs speech data (data.name 'speech_manifest'): no {key}")
    front_end = _section(task_config, "front_end")
    rate = front_end.pop("sample_rate", info["sample_rate"])
    if rate != info["sample_rate"]:
        raise ConfigError(
            f"task.front_end.sample_rate={rate} but the data is read at {info['sample_rate']} Hz "
            "(set data.options.sample_rate instead)"
        )
    try:
        front_end = FrontEndConfig(sample_rate=int(rate), **front_end)
    except TypeError as error:
        raise ConfigError(f"task.front_end: {error}") from None
    except ValueError as error:
        raise ConfigError(f"task.front_end: {error}") from None
    decoder = _section(task_config, "decoder")
    known = ("beam_width", "lm_order", "lm_unit", "lm_weight", "word_bonus", "token_min_log_prob")
    unknown = sorted(set(decoder) - set(known))
    if unknown:
        raise ConfigError(f"unknown task.decoder setting {unknown[0]!r}; known: {', '.join(known)}")
    beam_width, lm_order = int(decoder.get("beam_width", 0)), int(decoder.get("lm_order", 0))
    if beam_width < 0 or lm_order < 0:
        raise ConfigError("task.decoder.beam_width and lm_order must be >= 0")
    lm_unit = decoder.get("lm_unit", "char")
    if lm_unit not in ("char", "word"):
        raise ConfigError(f"task.decoder.lm_unit must be 'char' or 'word', got {lm_unit!r}")
    if lm_unit == "word" and int(info.get("space_id", -1)) < 0:
        raise ConfigError("task.decoder.lm_unit='word' needs a vocabulary with a space")
    lm = training_transcript_lm(data, lm_order, lm_unit) if beam_width and lm_order else None
    try:
        return CTCSpeechRecognition(
            max_samples=int(info["max_samples"]),
            max_label_len=int(info["max_label_len"]),
            front_end=front_end,
            spec_augment=tuple(sorted(_section(task_config, "spec_augment").items())),
            waveform_augment=tuple(
                (key, tuple(value) if isinstance(value, list) else value)
                for key, value in sorted(_section(task_config, "waveform_augment").items())
            ),
            blank_id=int(info.get("blank_id", 0)),
            space_id=int(info.get("space_id", -1)),
            tokenizer=info.get("tokenizer"),
            beam_width=beam_width,
            lm=lm,
            lm_weight=float(decoder.get("lm_weight", 0.5)),
            word_bonus=float(decoder.get("word_bonus", 0.0)),
            token_min_log_prob=_optional_float(decoder.get("token_min_log_prob")),
        )
    except ValueError as error:
        raise ConfigError(f"task ctc: {error}") from None


def training_transcript_lm(data: DataSplits, order: int, unit: str = "char"):
    """An n-gram LM of ``order`` over the training transcripts (never val or test): characters
    (``CharNgramLM``) or words of the training lexicon (``LexiconWordLM``)."""
    from jaxdl.models.ctc_decoding import CharNgramLM, LexiconWordLM

    tokenizer, train = data.info["tokenizer"], data.train
    sequences = [tuple(tokenizer.encode(train.transcript(i))) for i in range(len(train))]
    if unit == "word":
        lm = LexiconWordLM(order, int(data.info["space_id"]))
    else:
        lm = CharNgramLM(order, tokenizer.vocab_size)
    return lm.fit(s for s in sequences if s)


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _section(task_config: ml_collections.ConfigDict, name: str) -> dict:
    """``task_config.name`` as a plain dict (empty when absent)."""
    section = task_config.get(name) or {}
    return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
