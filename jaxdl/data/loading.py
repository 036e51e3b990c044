"""``config.data`` → ``DataSplits``: the one place a config's dataset is opened and split.

Two kinds of dataset:

* **in memory** (``digits`` and the bundled text corpora): small, decoded once, split and
  standardised as arrays — the default experiment's path, unchanged.
* **streaming** (``image_folder``, ``hf_image``, ``mask_folder``, ``hf_segmentation``,
  ``text_lines``, ``hf_text``, ``array_record``): a *pool* source that decodes one record at a
  time. Splits are index views (stratified when labels are known without decoding), image
  statistics and character vocabularies come from a bounded, seeded sample of the train split,
  and grain decodes records in its workers — host memory does not grow with the dataset.

Text pools become packed language-model rows when they carry no labels, and padded,
tokenised classification records when they do.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from jaxdl.data.array_record import ArrayRecordSource
from jaxdl.data.folds import cross_validation_fold
from jaxdl.data.image import per_channel_stats
from jaxdl.data.image_sources import HFImageSource, ImageFolderSource
from jaxdl.data.imbalance import apply_train_options
from jaxdl.data.mask_sources import HFSegmentationSource, MaskFolderSource
from jaxdl.data.packing import PackedRows, estimate_rows, sample_unigram_counts
from jaxdl.data.records import ArraySource, DataSplits, RecordError, RecordSource
from jaxdl.data.segmentation import SEGMENTATION_SPLIT_LOADERS
from jaxdl.data.sources import ArrayDataset, get_dataset, load_digits_dataset
from jaxdl.data.speech import SPEECH_SPLIT_LOADERS
from jaxdl.data.split import stratified_split
from jaxdl.data.text_datasets import TEXT_SPLIT_LOADERS
from jaxdl.data.text_sources import (
    TOKENIZERS,
    ByteTokenizer,
    CharTokenizer,
    HFTextSource,
    TextLineSource,
    TokenizedText,
    Tokenizer,
    record_text,
)
from jaxdl.data.views import StandardizedImages, SubsetSource, sample_channel_stats, source_labels
from jaxdl.errors import ConfigError, DataError, UserError

IN_MEMORY_IMAGE_DATASETS = ("digits",)
# Datasets whose loader returns its own splits (text corpora with frozen splits, speech manifests,
# segmentation scenes composed per split).
SPLIT_LOADERS = {**TEXT_SPLIT_LOADERS, **SPEECH_SPLIT_LOADERS, **SEGMENTATION_SPLIT_LOADERS}


def _digits_pool() -> tuple[RecordSource, dict]:
    digits = load_digits_dataset()
    return _array_pool(digits)


def _array_pool(dataset: ArrayDataset) -> tuple[RecordSource, dict]:
    source = ArraySource(inputs=dataset.inputs, labels=dataset.labels)
    return source, {"kind": "image", "class_names": list(dataset.class_names)}


def _image_folder_pool(**options: Any) -> tuple[RecordSource, dict]:
    source = ImageFolderSource(**options)
    return source, {"kind": "image", "class_names": source.class_names}


def _hf_image_pool(path: str, **options: Any) -> tuple[RecordSource, dict]:
    source = HFImageSource(path, **options)
    return source, {"kind": "image", "class_names": source.class_names}


def _mask_folder_pool(**options: Any) -> tuple[RecordSource, dict]:
    source = MaskFolderSource(**options)
    return source, _segmentation_info(source)


def _hf_segmentation_pool(path: str, **options: Any) -> tuple[RecordSource, dict]:
    source = HFSegmentationSource(path, **options)
    return source, _segmentation_info(source)


def _segmentation_info(source: Any) -> dict:
    """A mask source's pool info: its classes and, when set, its ignore label."""
    info = {"kind": "image", "class_names": source.class_names}
    if source.ignore_index is not None:
        info["ignore_index"] = source.ignore_index
    return info


def _text_lines_pool(paths: Any) -> tuple[RecordSource, dict]:
    return TextLineSource(paths), {"kind": "text"}


def _hf_text_pool(path: str, **options: Any) -> tuple[RecordSource, dict]:
    source = HFTextSource(path, **options)
    info: dict[str, Any] = {"kind": "text"}
    if source.labels is not None:
        info["class_names"] = source.class_names
    return source, info


def _array_record_pool(path: str) -> tuple[RecordSource, dict]:
    source = ArrayRecordSource(path)
    info = dict(source.info)
    if info.get("kind") not in ("image", "text"):
        raise ValueError(f"{path}: metadata info.kind must be 'image' or 'text'")
    return source, info


# Streaming datasets: name -> opener of the unsplit pool (a source plus what it knows).
POOL_OPENERS = {
    "digits": _digits_pool,
    "image_folder": _image_folder_pool,
    "hf_image": _hf_image_pool,
    # Segmentation (image + per-pixel class mask; random splits, as masks carry no one label).
    "mask_folder": _mask_folder_pool,
    "hf_segmentation": _hf_segmentation_pool,
    "text_lines": _text_lines_pool,
    "hf_text": _hf_text_pool,
    "array_record": _array_record_pool,
}
# Options the split stage reads (the rest go to the pool opener).
SPLIT_OPTIONS = ("tokenizer", "seq_len", "max_len", "min_freq")


def available_datasets() -> list[str]:
    return sorted({*POOL_OPENERS, *SPLIT_LOADERS})


def _options(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
    options = data_config.get("options", ml_collections.ConfigDict())
    return options.to_dict() if isinstance(options, ml_collections.ConfigDict) else {}


def _check_name(name: Any) -> None:
    if name not in available_datasets():
        raise ConfigError(f"unknown data.name {name!r}; available: {available_datasets()}")


def _as_user_error(name: str, load):
    """Runs ``load()``, turning bad options and unreadable data into one-line user errors."""
    try:
        return load()
    except UserError:
        raise
    except TypeError as error:  # an option the loader does not take
        if "argument" not in str(error):
            raise
        raise ConfigError(f"data.options for {name!r}: {error}") from None
    except RecordError as error:
        raise DataError(
            f"data {name!r}: {error} (data.on_error='skip' skips such records)"
        ) from None
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"data {name!r}: {error}") from None


def open_pool(data_config: ml_collections.ConfigDict) -> tuple[RecordSource, dict]:
    """The unsplit source of a streaming (or in-memory image) dataset and its ``info``; what
    ``jaxdl data convert`` writes out."""
    name = data_config.get("name")
    _check_name(name)
    if name not in POOL_OPENERS:
        raise ConfigError(
            f"data.name {name!r} splits as it loads and cannot be converted; convert one of "
            f"{sorted(POOL_OPENERS)}"
        )
    options = {k: v for k, v in _options(data_config).items() if k not in SPLIT_OPTIONS}
    return _as_user_error(name, lambda: POOL_OPENERS[name](**options))


def load_data(data_config: ml_collections.ConfigDict) -> DataSplits:
    """Opens and splits ``data_config.name`` with ``data_config.options``; with
    ``data.cv_folds`` set, train and validation become fold ``data.cv_fold`` of them
    (``jaxdl.data.folds``).

    A missing or unreadable file, or data that cannot be split, raises ``DataError``; an
    unknown dataset name or option ``ConfigError``.
    """
    splits = _load_splits(data_config)
    folds = data_config.get("cv_folds")
    if folds:
        fold = data_config.get("cv_fold", 0)
        seed = int(data_config.get("split_seed", 0))
        splits = cross_validation_fold(splits, folds, fold, seed)
    # data.imbalance / data.oversample / data.smote reshape the final train split only, after
    # any fold split (jaxdl.data.imbalance).
    return apply_train_options(splits, data_config)


def _load_splits(data_config: ml_collections.ConfigDict) -> DataSplits:
    """The configured train/val/test splits of ``data_config.name``."""
    name = data_config.get("name")
    _check_name(name)
    options = _options(data_config)
    fractions = tuple(float(f) for f in data_config.get("split_fractions", (0.7, 0.15, 0.15)))
    seed = int(data_config.get("split_seed", 0))
    if name in SPLIT_LOADERS:
        return _as_user_error(
            name,
            lambda: SPLIT_LOADERS[name](split_fractions=fractions, split_seed=seed, **options),
        )
    standardize = bool(data_config.get("standardize", True))
    if name in IN_MEMORY_IMAGE_DATASETS:
        dataset = _as_user_error(name, lambda: get_dataset(name, **options))
        return _as_user_error(name, lambda: _split_images(dataset, fractions, seed, standardize))
    pool, info = open_pool(data_config)
    split_options = {k: v for k, v in options.items() if k in SPLIT_OPTIONS}
    sample = Sample(
        max_records=int(data_config.get("stats_max_records", 8192)),
        seed=seed,
        skip_errors=data_config.get("on_error", "raise") == "skip",
    )
    if info["kind"] == "image":
        if split_options:
            raise ConfigError(f"data.options {sorted(split_options)} do not apply to images")
        return _as_user_error(
            name, lambda: _split_image_pool(pool, info, fractions, seed, standardize, sample)
        )
    return _as_user_error(
        name, lambda: _split_text_pool(pool, info, fractions, seed, sample, **split_options)
    )


class Sample:
    """How statistics are estimated: at most ``max_records`` train records, drawn with ``seed``;
    unreadable ones skipped when ``data.on_error='skip'``."""

    def __init__(self, max_records: int, seed: int, skip_errors: bool):
        if max_records < 1:
            raise ConfigError(f"data.stats_max_records must be >= 1, got {max_records}")
        self.max_records, self.seed, self.skip_errors = max_records, seed, skip_errors

    def indices(self, count: int) -> np.ndarray:
        if count <= self.max_records:
            return np.arange(count)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(count, self.max_records, replace=False))

    def records(self, source: RecordSource):
        """The sampled records of ``source`` that can be read."""
        for index in self.indices(len(source)):
            try:
                yield source[int(index)]
            except RecordError:
                if not self.skip_errors:
                    raise


def _split_indices(pool: RecordSource, fractions: tuple[float, ...], seed: int):
    """Stratified index splits when the pool knows its labels, seeded random ones otherwise."""
    labels = source_labels(pool)
    if labels is not None:
        try:
            return stratified_split(labels, fractions=fractions, seed=seed)
        except ValueError as error:
            counts = np.bincount(labels).tolist()
            raise ValueError(
                f"cannot split {len(labels)} records with class counts {counts} by "
                f"data.split_fractions={fractions}: {error}"
            ) from None
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ValueError(f"split_fractions must be 3 positive numbers summing to 1: {fractions}")
    order = np.random.default_rng(seed).permutation(len(pool))
    num_val = max(1, round(len(pool) * fractions[1]))
    num_test = max(1, round(len(pool) * fractions[2]))
    num_train = len(pool) - num_val - num_test
    if num_train < 1:
        raise ValueError(f"{len(pool)} records cannot be split by {fractions}")
    bounds = np.cumsum([0, num_train, num_val, num_test])
    return tuple(np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _split_images(
    dataset: ArrayDataset, fractions: tuple[float, ...], seed: int, standardize: bool
) -> DataSplits:
    """In memory: stratified (seeded) split, every split standardised with train statistics."""
    indices = stratified_split(dataset.labels, fractions=fractions, seed=seed)
    train, val, test = (dataset.subset(i) for i in indices)
    if standardize:
        mean, std = per_channel_stats(train.inputs)
    else:
        channels = dataset.inputs.shape[-1]
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    sources = [
        ArraySource(
            inputs=((d.inputs - mean) / np.maximum(std, 1e-6)).astype(np.float32),
            labels=d.labels.astype(np.int32),
        )
        for d in (train, val, test)
    ]
    info = {
        "class_names": list(dataset.class_names),
        "num_classes": dataset.num_classes,
        "input_shape": tuple(dataset.inputs.shape[1:]),
        # Of pixels in [0, 1]: what a served image file is standardised with.
        "channel_mean": mean.tolist(),
        "channel_std": np.maximum(std, 1e-6).tolist(),
    }
    return DataSplits(*sources, info=info)


def _split_image_pool(
    pool: RecordSource,
    info: dict,
    fractions: tuple[float, ...],
    seed: int,
    standardize: bool,
    sample: Sample,
) -> DataSplits:
    """Streaming: stratified index views, standardised per record with sampled statistics."""
    splits = [SubsetSource(pool, part) for part in _split_indices(pool, fractions, seed)]
    if standardize:
        mean, std = sample_channel_stats(
            splits[0], sample.max_records, sample.seed, skip_errors=sample.skip_errors
        )
    else:
        channels = np.asarray(next(sample.records(splits[0]))["inputs"]).shape[-1]
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    splits = [StandardizedImages(split, mean, std) for split in splits]
    example = next(sample.records(splits[0]))["inputs"]
    class_names = list(info["class_names"])
    out_info = {
        "class_names": class_names,
        "num_classes": len(class_names),
        "input_shape": tuple(np.shape(example)),
        "channel_mean": mean.tolist(),
        "channel_std": std.tolist(),
    }
    if "ignore_index" in info:  # mask sources' ignore label: the task's default
        out_info["ignore_index"] = info["ignore_index"]
    return DataSplits(*splits, info=out_info)


def _build_tokenizer(kind: str, train: RecordSource, sample: Sample, min_freq: int) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        texts = (record_text(record) for record in sample.records(train))
        return CharTokenizer.build(texts, min_freq=min_freq)
    raise ConfigError(f"data.options.tokenizer must be one of {list(TOKENIZERS)}, got {kind!r}")


def _split_text_pool(
    pool: RecordSource,
    info: dict,
    fractions: tuple[float, ...],
    seed: int,
    sample: Sample,
    tokenizer: str = "byte",
    seq_len: int = 128,
    max_len: int = 128,
    min_freq: int = 1,
) -> DataSplits:
    """Labelled text → padded classification records; unlabelled → packed LM rows."""
    splits = [SubsetSource(pool, part) for part in _split_indices(pool, fractions, seed)]
    tok = _build_tokenizer(tokenizer, splits[0], sample, int(min_freq))
    common = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "tokenizer": tok}
    if source_labels(pool) is not None:
        add_cls = getattr(tok, "cls_id", None) is not None
        sources = [TokenizedText(s, tok, max_len=int(max_len), add_cls=add_cls) for s in splits]
        class_names = list(info["class_names"])
        return DataSplits(
            *sources, info={**common, "class_names": class_names, "num_classes": len(class_names)}
        )
    documents = [TokenizedText(s, tok) for s in splits]
    row_length = int(seq_len) + 1
    train = documents[0]
    unigram, mean_length = sample_unigram_counts(train, sample.records, tok.vocab_size)
    out_info = {
        **common,
        "packed": True,
        "seq_len": int(seq_len),
        "unigram_counts": unigram,
        # Rows the packer makes from one pass over the train documents (estimated from the
        # sample): what an "epoch" means for step counts and schedules.
        "train_examples": estimate_rows(len(train), mean_length, row_length),
    }
    val, test = (PackedRows(d, row_length, skip_errors=sample.skip_errors) for d in documents[1:])
    return DataSplits(train, val, test, info=out_info)
