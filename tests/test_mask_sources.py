"""Segmentation sources: image + mask folders and 🤗 datasets tables with a mask column."""

import json
import textwrap

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxdl.data.loading import load_data
from jaxdl.data.mask_sources import HFSegmentationSource, MaskFolderSource
from jaxdl.data.records import RecordError
from jaxdl.errors import DataError


def _pair(rng, size=16, classes=3):
    """An RGB image whose red channel encodes its mask (class * 80) and the mask."""
    mask = rng.integers(0, classes, (size, size)).astype(np.uint8)
    image = np.stack([mask * 80, rng.integers(0, 256, (size, size)), mask * 0], -1)
    return image.astype(np.uint8), mask


def _write_mask_folder(root, count=8, size=16, classes_txt=True):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for i in range(count):
        image, mask = _pair(rng, size)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        pairs.append((image, mask))
    if classes_txt:
        (root / "classes.txt").write_text("background\nleaf\nstem\n")
    return pairs


def test_mask_folder_reads_image_and_mask_pairs_by_stem(tmp_path):
    pairs = _write_mask_folder(tmp_path)
    source = MaskFolderSource(tmp_path)
    assert len(source) == 8 and source.class_names == ["background", "leaf", "stem"]
    record = source[3]
    np.testing.assert_array_equal(record["inputs"], pairs[3][0])
    np.testing.assert_array_equal(record["labels"], pairs[3][1])
    assert record["labels"].dtype == np.int32
    # No classes.txt: num_classes, or 0..the largest label of all masks.
    (tmp_path / "classes.txt").unlink()
    assert MaskFolderSource(tmp_path, num_classes=5).num_classes == 5
    assert MaskFolderSource(tmp_path).class_names == ["0", "1", "2"]
    resized = MaskFolderSource(tmp_path, image_size=8)[0]
    assert resized["inputs"].shape == (8, 8, 3) and resized["labels"].shape == (8, 8)
    assert set(np.unique(resized["labels"])) <= {0, 1, 2}  # nearest: never a blend


def test_mask_folder_bad_input_names_the_file(tmp_path):
    _write_mask_folder(tmp_path)
    (tmp_path / "masks" / "s1.png").unlink()
    with pytest.raises(ValueError, match=r"images/s1.png has no mask"):
        MaskFolderSource(tmp_path)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "masks" / "s1.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "masks" / "s2.png")
    (tmp_path / "masks" / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "masks" / "s4.png")
    source = MaskFolderSource(tmp_path)
    for index, message in [
        (1, r"masks/s1.png is 8x16 but its image .*images/s1.png is 16x16"),
        (2, r"masks/s2.png holds class id 7 outside 0..2"),
        (3, r"cannot decode file .*masks/s3.png"),
        (4, r"mask .*masks/s4.png has mode 'RGB'"),
    ]:
        with pytest.raises(RecordError, match=message) as raised:
            source[index]
        assert "\n" not in str(raised.value)
    config = ml_collections.ConfigDict({"name": "mask_folder", "options": {"root": str(tmp_path)}})
    with pytest.raises(DataError, match=r"data 'mask_folder': .*data.on_error='skip'"):
        load_data(config)


def test_load_data_splits_a_mask_folder_and_standardizes_images(tmp_path):
    _write_mask_folder(tmp_path, count=10)
    config = ml_collections.ConfigDict(
        {
            "name": "mask_folder",
            "options": {"root": str(tmp_path)},
            "split_fractions": (0.6, 0.2, 0.2),
        }
    )
    data = load_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 2)
    assert data.info["num_classes"] == 3 and data.info["input_shape"] == (16, 16, 3)
    record = data.train[0]
    assert record["inputs"].dtype == np.float32 and record["labels"].shape == (16, 16)


def test_hf_segmentation_reads_a_saved_dataset_with_a_mask_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    pairs = [_pair(rng, 8) for _ in range(4)]
    table = datasets.Dataset.from_dict(
        {
            "pixels": [Image.fromarray(image) for image, _ in pairs],
            "annotation": [Image.fromarray(mask) for _, mask in pairs[:3]]
            + [Image.fromarray(np.full((8, 8), 9, np.uint8))],
        },
        features=datasets.Features({"pixels": datasets.Image(), "annotation": datasets.Image()}),
    )
    table.save_to_disk(str(tmp_path / "ds"))
    source = HFSegmentationSource(
        str(tmp_path / "ds"), image_column="pixels", mask_column="annotation", num_classes=3
    )
    assert len(source) == 4 and source.color_mode == "rgb"
    np.testing.assert_array_equal(source[2]["labels"], pairs[2][1])
    np.testing.assert_array_equal(source[2]["inputs"], pairs[2][0])
    with pytest.raises(RecordError, match=r"'annotation' of .*ds\[train\] row 3 holds class id 9"):
        source[3]
    with pytest.raises(ValueError, match="column 'mask' not found"):
        HFSegmentationSource(str(tmp_path / "ds"), image_column="pixels")


# A config over segment_unet.py with the data swapped for a mask folder.
_CONFIG = """
from pathlib import Path
import ml_collections
from jaxdl.config import load_config

def get_config(arg=None):
    config = load_config(str(Path({experiment!r})) + ":epochs=2,width=4,depth=1,batch_size=8")
    config.data = ml_collections.ConfigDict(
        {{"name": "mask_folder", "options": {{"root": {root!r}}},
          "split_fractions": (0.5, 0.25, 0.25), "worker_count": 0}}
    )
    config.task.rotate_degrees = 10.0
    config.task.scale_range = (0.9, 1.1)
    config.train.eval_batch_size = 8
    return config
"""


@pytest.mark.slow  # compiles and trains a (tiny) U-Net
def test_jaxdl_train_and_predict_on_a_mask_folder(tmp_path):
    from pathlib import Path

    from jaxdl.cli import main

    _write_mask_folder(tmp_path / "data", count=16)
    experiment = Path(__file__).parents[1] / "experiments" / "segment_unet.py"
    config = tmp_path / "seg_folder.py"
    config.write_text(
        textwrap.dedent(_CONFIG).format(experiment=str(experiment), root=str(tmp_path / "data"))
    )
    workdir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--workdir", str(workdir)]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["per_class_iou"]) == {"background", "leaf", "stem"}
    assert 0.0 <= results["miou"] <= 1.0
    for plot in ("mask_overlays.png", "per_class_iou.png"):  # drawn at the end of training
        assert (workdir / "plots" / plot).stat().st_size > 0
    assert main(["predict", "--workdir", str(workdir)]) == 0
    analysis = workdir / "analysis"
    assert (analysis / "mask_overlays_test.png").stat().st_size > 0
    assert (analysis / "per_class_iou_test.png").stat().st_size > 0
    assert json.loads((analysis / "segmentation_test.json").read_text())["miou"] == pytest.approx(
        results["miou"]
    )


def _mark_ignored(root, stem="s2"):
    """Sets a 2x3 block of one mask to 255 (Pascal VOC's ignore label); returns the mask."""
    path = root / "masks" / f"{stem}.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[3:5, 4:7] = 255
    Image.fromarray(mask).save(path)
    return mask


def test_mask_folder_takes_the_ignore_label_only_when_set(tmp_path):
    _write_mask_folder(tmp_path)
    mask = _mark_ignored(tmp_path)
    with pytest.raises(
        RecordError, match=r"masks/s2.png holds class id 255 outside 0..2"
    ) as raised:
        MaskFolderSource(tmp_path)[2]
    assert "set data.options.ignore_index=255" in str(raised.value)
    assert "\n" not in str(raised.value)
    source = MaskFolderSource(tmp_path, ignore_index=255)
    np.testing.assert_array_equal(source[2]["labels"], mask)
    # Other values outside the classes still fail, naming the file and the value.
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "masks" / "s5.png")
    with pytest.raises(RecordError, match=r"masks/s5.png holds class id 7 outside 0..2"):
        source[5]
    # Without classes.txt the ignore label is not a class: classes are 0..2 still.
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "masks" / "s5.png").unlink()
    (tmp_path / "images" / "s5.png").unlink()
    assert MaskFolderSource(tmp_path, ignore_index=255).class_names == ["0", "1", "2"]
    with pytest.raises(ValueError, match="ignore_index 1 is a class id"):
        MaskFolderSource(tmp_path, ignore_index=1)


def test_load_data_and_task_take_the_sources_ignore_label(tmp_path):
    from jaxdl.errors import ConfigError
    from jaxdl.tasks.registry import build_task

    _write_mask_folder(tmp_path, count=10)
    _mark_ignored(tmp_path)
    config = ml_collections.ConfigDict(
        {
            "data": {
                "name": "mask_folder",
                "options": {"root": str(tmp_path), "ignore_index": 255},
                "split_fractions": (0.6, 0.2, 0.2),
            },
            "task": {"name": "segmentation"},
        }
    )
    data = load_data(config.data)
    assert data.info["ignore_index"] == 255 and data.info["num_classes"] == 3
    assert build_task(config, data).ignore_index == 255  # the task's default: the data's
    config.task.ignore_index = 254
    with pytest.raises(ConfigError, match=r"task.ignore_index=254 but the data's .* 255"):
        build_task(config, data)
    del config.data.options["ignore_index"]
    with pytest.raises(DataError, match=r"s2.png holds class id 255 .*ignore_index=255"):
        load_data(config.data)


def test_hf_segmentation_takes_the_ignore_label(tmp_path):
    datasets = pytest.importorskip("datasets")
    masks = [np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)]
    masks[0][1, 1] = 2
    table = datasets.Dataset.from_dict(  # masks as 2-D arrays of class ids
        {"image": [Image.new("RGB", (4, 4))] * 2, "mask": [m.tolist() for m in masks]},
        features=datasets.Features(
            {"image": datasets.Image(), "mask": datasets.Array2D((4, 4), "int64")}
        ),
    )
    table.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(RecordError, match=r"'mask' of .*row 1 holds class id 255"):
        HFSegmentationSource(str(tmp_path / "ds"), num_classes=3)[1]
    source = HFSegmentationSource(str(tmp_path / "ds"), ignore_index=255)
    assert source.num_classes == 3  # 0..2: the ignore label is no class
    np.testing.assert_array_equal(source[1]["labels"], masks[1])
