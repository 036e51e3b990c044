"""Tests for jaxdl.data.sources: ArrayDataset, digits, image folders, HF datasets, registry."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxdl.data.sources import (
    ArrayDataset,
    get_dataset,
    load_digits_dataset,
    load_hf_image_dataset,
    load_image_folder,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> None:
    """Writes a solid-colour RGB PNG of PIL size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _make_folder(root: Path) -> Path:
    """Two classes: 'blue' (1 image) and 'red' (2 images), each 4x6 pixels."""
    _write_png(root / "red" / "a.png", RED)
    _write_png(root / "red" / "b.png", RED)
    _write_png(root / "blue" / "c.png", BLUE)
    return root


def test_array_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset(np.zeros((3, 2)), np.zeros(2, np.int32), ["a"])


def test_array_dataset_subset_selects_rows_and_keeps_class_names():
    dataset = ArrayDataset(np.arange(5.0)[:, None], np.array([0, 1, 0, 1, 1]), ["a", "b"])
    part = dataset.subset([4, 0])
    assert len(part) == 2
    np.testing.assert_array_equal(part.inputs[:, 0], [4.0, 0.0])
    np.testing.assert_array_equal(part.labels, [1, 0])
    assert part.class_names == ["a", "b"] and part.num_classes == 2


def test_digits_are_float_unit_range_images_with_ten_classes():
    dataset = load_digits_dataset()
    assert dataset.inputs.shape == (1797, 8, 8, 1)
    assert dataset.inputs.dtype == np.float32 and dataset.labels.dtype == np.int32
    assert dataset.inputs.min() == 0.0 and dataset.inputs.max() == 1.0
    assert dataset.class_names == [str(i) for i in range(10)]
    assert set(np.unique(dataset.labels)) == set(range(10))


def test_image_folder_loads_classes_from_sorted_subfolders(tmp_path):
    dataset = load_image_folder(_make_folder(tmp_path))
    assert dataset.class_names == ["blue", "red"]
    assert dataset.inputs.shape == (3, 4, 6, 3) and dataset.inputs.dtype == np.float32
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1])
    np.testing.assert_allclose(dataset.inputs[0, 0, 0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(dataset.inputs[1, 0, 0], [1.0, 0.0, 0.0])


def test_image_folder_grayscale_and_resize(tmp_path):
    dataset = load_image_folder(_make_folder(tmp_path), image_size=(3, 5), color_mode="grayscale")
    assert dataset.inputs.shape == (3, 3, 5, 1)
    # PIL luma of pure red is round(0.299 * 255) = 76.
    np.testing.assert_allclose(dataset.inputs[1], 76 / 255, atol=1e-6)


def test_image_folder_requires_image_size_for_mixed_sizes(tmp_path):
    root = _make_folder(tmp_path)
    _write_png(root / "red" / "z.png", RED, size=(7, 7))
    with pytest.raises(ValueError, match="z.png.*image_size"):
        load_image_folder(root)
    assert load_image_folder(root, image_size=4).inputs.shape == (4, 4, 4, 3)


def test_image_folder_corrupt_image_error_names_the_file(tmp_path):
    root = _make_folder(tmp_path)
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(root)


def test_image_folder_empty_or_missing_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_folder(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="cats.*no image files"):
        load_image_folder(tmp_path)


def test_image_folder_rejects_unknown_color_mode(tmp_path):
    with pytest.raises(ValueError, match="color_mode"):
        load_image_folder(_make_folder(tmp_path), color_mode="cmyk")


def _tiny_hf_dataset():
    import datasets

    images = [Image.new("L", (5, 3), value) for value in (0, 255, 51)]
    features = datasets.Features(
        {"img": datasets.Image(), "digit": datasets.ClassLabel(names=["zero", "one"])}
    )
    return datasets.Dataset.from_dict({"img": images, "digit": [0, 1, 1]}, features=features)


def test_hf_loader_reads_saved_to_disk_dataset(tmp_path):
    _tiny_hf_dataset().save_to_disk(str(tmp_path / "ds"))
    dataset = load_hf_image_dataset(
        str(tmp_path / "ds"), split="train", image_column="img", label_column="digit"
    )
    assert dataset.inputs.shape == (3, 3, 5, 1)
    np.testing.assert_allclose(dataset.inputs[:, 0, 0, 0], [0.0, 1.0, 0.2], atol=1e-6)
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1])
    assert dataset.class_names == ["zero", "one"]


def test_hf_loader_picks_split_from_saved_dataset_dict(tmp_path):
    import datasets

    full = _tiny_hf_dataset()
    splits = datasets.DatasetDict({"train": full.select([0, 1]), "test": full.select([2])})
    splits.save_to_disk(str(tmp_path / "dd"))
    test = load_hf_image_dataset(
        str(tmp_path / "dd"), "test", image_column="img", label_column="digit", color_mode="rgb"
    )
    assert test.inputs.shape == (1, 3, 5, 3)
    with pytest.raises(ValueError, match="split 'val'"):
        load_hf_image_dataset(str(tmp_path / "dd"), "val", "img", "digit")


def test_hf_loader_reads_local_imagefolder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _make_folder(tmp_path / "images")
    dataset = load_hf_image_dataset(
        "imagefolder", "train", data_dir=str(root), cache_dir=str(tmp_path / "cache")
    )
    assert dataset.inputs.shape == (3, 4, 6, 3)
    assert dataset.class_names == ["blue", "red"]
    colors = {tuple(dataset.inputs[i, 0, 0]) for i in range(3)}
    blue_rows = np.flatnonzero(dataset.labels == 0)
    assert colors == {(0.0, 0.0, 1.0), (1.0, 0.0, 0.0)} and len(blue_rows) == 1
    np.testing.assert_allclose(dataset.inputs[blue_rows[0], 0, 0], [0.0, 0.0, 1.0])


def test_hf_loader_missing_column_names_it(tmp_path):
    _tiny_hf_dataset().save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="'image'"):
        load_hf_image_dataset(str(tmp_path / "ds"), "train", label_column="digit")


def test_get_dataset_builds_registered_and_rejects_unknown(tmp_path):
    assert len(get_dataset("digits")) == 1797
    assert get_dataset("image_folder", root=_make_folder(tmp_path)).num_classes == 2
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits.*hf_image"):
        get_dataset("mnist")
