"""``config.data`` → ``DataSplits``: the one place a config's dataset is loaded and split.

Image datasets (``digits``, ``image_folder``, ``hf_image``) are split stratified and standardised
with train-set statistics; text datasets come with their own split rules (whole documents per
split for language modelling, deduplicated stratified splits for classification).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxdl.data.image import per_channel_stats
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data.sources import ArrayDataset, get_dataset, image_dataset_names
from jaxdl.data.split import stratified_split
from jaxdl.data.text_datasets import TEXT_SPLIT_LOADERS
from jaxdl.errors import ConfigError, DataError, UserError


def available_datasets() -> list[str]:
    return sorted({*image_dataset_names(), *TEXT_SPLIT_LOADERS})


def load_data(data_config: ml_collections.ConfigDict) -> DataSplits:
    """Loads and splits ``data_config.name`` with ``data_config.options``.

    A missing or unreadable file, or data that cannot be split, raises ``DataError``; an
    unknown dataset name ``ConfigError``.
    """
    name = data_config.get("name")
    options = data_config.get("options", ml_collections.ConfigDict())
    options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else {}
    if name not in available_datasets():
        raise ConfigError(f"unknown data.name {name!r}; available: {available_datasets()}")
    fractions = tuple(float(f) for f in data_config.get("split_fractions", (0.7, 0.15, 0.15)))
    seed = int(data_config.get("split_seed", 0))
    try:
        if name in TEXT_SPLIT_LOADERS:
            return TEXT_SPLIT_LOADERS[name](split_fractions=fractions, split_seed=seed, **options)
        dataset = get_dataset(name, **options)
        return _split_images(dataset, fractions, seed, bool(data_config.get("standardize", True)))
    except UserError:
        raise
    except TypeError as error:  # an option the loader does not take
        if "argument" not in str(error):
            raise
        raise ConfigError(f"data.options for {name!r}: {error}") from None
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"data {name!r}: {error}") from None


def _split_images(
    dataset: ArrayDataset, fractions: tuple[float, ...], seed: int, standardize: bool
) -> DataSplits:
    """Stratified (seeded) split; standardises every split with train-set channel statistics."""
    indices = stratified_split(dataset.labels, fractions=fractions, seed=seed)
    train, val, test = (dataset.subset(i) for i in indices)
    mean, std = per_channel_stats(train.inputs) if standardize else (0.0, 1.0)
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
    }
    return DataSplits(*sources, info=info)
