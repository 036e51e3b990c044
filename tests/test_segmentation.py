"""Segmentation: bundled digit scenes, the segmentation task's loss and metrics, and U-Net."""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from jaxdl.data.loading import load_data
from jaxdl.data.segmentation import compose_scenes, joint_shift_flip, load_digit_scenes
from jaxdl.errors import ConfigError
from jaxdl.models import UNet, get_model
from jaxdl.tasks.base import EXAMPLE_MASK
from jaxdl.tasks.registry import build_task
from jaxdl.tasks.segmentation import (
    SemanticSegmentation,
    plot_mask_overlays,
    segmentation_metrics,
    soft_dice_loss,
)


def _small_scenes(**options):
    return load_digit_scenes(num_train=40, num_val=8, num_test=8, **options)


def test_digit_scenes_are_deterministic_with_masks_of_eleven_classes():
    first, second = _small_scenes(), _small_scenes()
    np.testing.assert_array_equal(first.train.arrays["inputs"], second.train.arrays["inputs"])
    np.testing.assert_array_equal(first.test.arrays["labels"], second.test.arrays["labels"])
    assert first.train[0]["inputs"].shape == (32, 32, 1)
    assert first.train[0]["labels"].shape == (32, 32)
    assert first.info["num_classes"] == 11 and first.info["class_names"][0] == "background"
    labels = first.train.arrays["labels"]
    assert labels.min() == 0 and labels.max() <= 10
    assert set(np.unique(labels)) > {0}  # digits are drawn
    other = _small_scenes(split_seed=1)
    assert not np.array_equal(other.train.arrays["labels"], labels)


def test_compose_scenes_masks_follow_ink_and_later_digits_win():
    digits = np.zeros((2, 8, 8, 1), np.float32)
    digits[0, 2:6, 2:6] = 1.0  # a square of class 3
    digits[1, :, :] = 0.5  # a full patch of class 7
    images, masks = compose_scenes(digits, np.array([3, 7]), 30, seed=0, canvas=16, scale=1)
    assert images.shape == (30, 16, 16, 1) and masks.shape == (30, 16, 16)
    # Every inked pixel carries a digit class, blank pixels the background.
    np.testing.assert_array_equal(masks > 0, images[..., 0] >= 0.25)
    assert set(np.unique(masks)) == {0, 4, 8}
    with pytest.raises(ValueError, match="do not fit"):
        compose_scenes(digits, np.array([3, 7]), 1, seed=0, canvas=8, scale=2)


def test_digit_scene_splits_use_disjoint_source_digits(monkeypatch):
    import jaxdl.data.segmentation as segmentation

    used = []
    original = segmentation.compose_scenes

    def spy(digits, labels, count, seed, **kwargs):
        used.append({d.tobytes() for d in digits})
        return original(digits, labels, count, seed, **kwargs)

    monkeypatch.setattr(segmentation, "compose_scenes", spy)
    _small_scenes()
    train, val, test = used
    # sklearn's digits hold a few exact duplicate images; nearly all test digits are unseen.
    assert len(test & train) <= 2 and len(val & train) <= 2


def test_load_data_and_build_task_for_digit_scenes():
    config = ml_collections.ConfigDict(
        {
            "data": {
                "name": "digit_scenes",
                "options": {"num_train": 16, "num_val": 4, "num_test": 4},
            },
            "task": {"name": "segmentation", "dice_weight": 0.5},
        }
    )
    data = load_data(config.data)
    task = build_task(config, data)
    assert isinstance(task, SemanticSegmentation)
    assert task.num_classes == 11 and task.dice_weight == 0.5
    assert task.input_spec()["inputs"].shape == (32, 32, 1)
    config.task.dice_weight = -1.0
    with pytest.raises(ConfigError, match="dice_weight"):
        build_task(config, data)


def test_joint_shift_flip_moves_images_and_masks_together():
    rng = np.random.default_rng(3)
    masks = rng.integers(1, 4, (6, 8, 8)).astype(np.int32)
    images = np.stack([masks * 10.0, masks * -1.0], -1).astype(np.float32)  # image encodes mask
    task = SemanticSegmentation((8, 8, 2), 4, max_shift=2, flip_left_right=True, fill=(5.0, 7.0))
    batch = jax.jit(task.prepare_train_batch)(
        jax.random.key(0), {"inputs": images, "labels": masks, EXAMPLE_MASK: np.ones(6)}
    )
    out_images, out_masks = np.asarray(batch["inputs"]), np.asarray(batch["labels"])
    padded = out_masks == 0  # the mask's padding is background, the image's is ``fill``
    assert padded.any() and (out_masks > 0).any()
    np.testing.assert_array_equal(
        out_images[padded], np.broadcast_to([5.0, 7.0], (padded.sum(), 2))
    )
    np.testing.assert_array_equal(out_images[~padded][:, 0], out_masks[~padded] * 10.0)
    assert not np.array_equal(out_masks, masks)
    unchanged = jax.jit(joint_shift_flip)(jax.random.key(0), images, masks)
    np.testing.assert_array_equal(np.asarray(unchanged[1]), masks)


def test_segmentation_metrics_match_sklearn_confusion_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 6, 6))
    predictions = np.where(rng.random((3, 6, 6)) < 0.7, labels, rng.integers(0, 4, (3, 6, 6)))
    predictions[predictions == 3] = 2  # class 3 is never predicted: IoU 0
    confusion = sk_confusion_matrix(labels.ravel(), predictions.ravel(), labels=range(5))
    metrics = segmentation_metrics(confusion, ["a", "b", "c", "d", "e"])
    for c, name in enumerate("abcd"):
        true, pred = labels.ravel() == c, predictions.ravel() == c
        iou = np.sum(true & pred) / np.sum(true | pred)
        dice = 2 * np.sum(true & pred) / (true.sum() + pred.sum())
        assert metrics["per_class_iou"][name] == pytest.approx(iou)
        assert metrics["per_class_dice"][name] == pytest.approx(dice)
    assert metrics["per_class_iou"]["d"] == 0.0
    assert np.isnan(metrics["per_class_iou"]["e"])  # absent class: out of the mean
    assert metrics["miou"] == pytest.approx(np.mean([metrics["per_class_iou"][n] for n in "abcd"]))
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(labels == predictions))


def test_eval_sums_count_only_real_examples_and_add_up():
    task = SemanticSegmentation((4, 4, 1), num_classes=3)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (5, 4, 4)).astype(np.int32)
    logits = rng.normal(size=(5, 4, 4, 3)).astype(np.float32)
    batch = {
        "inputs": np.zeros((5, 4, 4, 1), np.float32),
        "labels": labels,
        EXAMPLE_MASK: np.array([1, 1, 1, 0, 0], np.float32),
    }
    sums = jax.jit(lambda lg, b: task.eval_sums(lambda x: lg, b))(logits, batch)
    expected = sk_confusion_matrix(
        labels[:3].ravel(), logits[:3].argmax(-1).ravel(), labels=range(3)
    )
    np.testing.assert_array_equal(np.asarray(sums["confusion"]), expected)
    assert float(sums["count"]) == 3
    results = task.summarize(jax.tree.map(np.asarray, sums))
    assert results["miou"] == pytest.approx(segmentation_metrics(expected)["miou"])


def test_loss_is_cross_entropy_plus_weighted_dice():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
    logits = rng.normal(size=(2, 4, 4, 3))
    # References in NumPy (float64).
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(3)[labels]
    cross_entropy = -np.mean(np.log(np.sum(probs * onehot, -1)))
    inter, total = (probs * onehot).sum((0, 1, 2)), (probs + onehot).sum((0, 1, 2))
    dice = 1 - np.mean((2 * inter + 1) / (total + 1))
    plain_task = SemanticSegmentation((4, 4, 1), 3)
    mixed_task = SemanticSegmentation((4, 4, 1), 3, dice_weight=0.5)

    @jax.jit
    def losses(lg, lb):
        batch = {"inputs": jnp.zeros((2, 4, 4, 1)), "labels": lb}
        perfect = jnp.where(jax.nn.one_hot(lb, 3) > 0, 50.0, -50.0)
        return (
            plain_task.loss(lambda x: lg, batch)[0],
            mixed_task.loss(lambda x: lg, batch)[0],
            soft_dice_loss(lg, lb),
            soft_dice_loss(perfect, lb),
        )

    plain, mixed, soft_dice, perfect_dice = losses(logits.astype(np.float32), labels)
    assert float(plain) == pytest.approx(cross_entropy, rel=1e-5)
    assert float(soft_dice) == pytest.approx(dice, rel=1e-5)
    assert float(mixed) == pytest.approx(cross_entropy + 0.5 * dice, rel=1e-5)
    assert float(perfect_dice) == pytest.approx(0.0, abs=1e-6)


def test_segmentation_plots_write_pngs(tmp_path):
    task = SemanticSegmentation((8, 8, 1), 3, class_names=["bg", "a", "b"])
    task.write_plots({"per_class_iou": {"bg": 0.9, "a": 0.5, "b": float("nan")}}, tmp_path, "_val")
    assert (tmp_path / "per_class_iou_val.png").stat().st_size > 0
    masks = np.random.default_rng(0).integers(0, 3, (2, 8, 8))
    path = plot_mask_overlays(np.ones((2, 8, 8, 1)), masks, masks[::-1], 3, tmp_path / "o.png")
    assert path.stat().st_size > 0


def _paper_parameter_count(in_channels: int, num_classes: int) -> int:
    """The paper's U-Net by hand: 3x3 convs and 2x2 up-convs with biases, no norm."""

    def conv(k, cin, cout):
        return k * k * cin * cout + cout

    widths = [64, 128, 256, 512, 1024]
    total, previous = 0, in_channels
    for w in widths:  # contracting path and bottleneck
        total += conv(3, previous, w) + conv(3, w, w)
        previous = w
    for w in reversed(widths[:-1]):  # expanding path: up-conv, then convs on [skip, up]
        total += conv(2, 2 * w, w) + conv(3, 2 * w, w) + conv(3, w, w)
    return total + conv(1, 64, num_classes)


def test_unet_paper_configuration_parameter_count():
    assert _paper_parameter_count(1, 2) == 31_030_658
    model = get_model("unet", num_classes=2, padding="valid", norm="none")
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 188, 188, 1)), train=False)
    )
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
    assert count == 31_030_658
    out = jax.eval_shape(
        lambda: model.apply(
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
            jnp.zeros((1, 572, 572, 1)),
            train=False,
        )
    )
    assert out.shape == (1, 388, 388, 2)  # the paper's 572 -> 388 tile


def test_unet_padded_keeps_size_and_checks_divisibility():
    model = UNet(num_classes=11, width=4, depth=2)
    x = jnp.zeros((2, 32, 32, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert "batch_stats" in variables
    logits, updates = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
    )

    assert logits.shape == (2, 32, 32, 11) and logits.dtype == jnp.float32
    assert "batch_stats" in updates
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    names = nn_axis_names(variables["params"])
    kernel_axes = ("conv_height", "conv_width", "conv_in", "conv_out")
    assert names["down0"]["conv1"]["kernel"] == kernel_axes
    assert names["down0"]["norm1"]["scale"] == ("conv_out",)
    assert names["upconv0"]["kernel"] == kernel_axes
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 1)), train=False)
        )


def nn_axis_names(params):
    """Logical axis names of each boxed parameter."""
    return jax.tree.map(
        lambda p: tuple(p.names), params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def _numpy_unet(params: dict, x: np.ndarray, depth: int, padding: str) -> np.ndarray:
    """The U-Net forward in NumPy (no norm) from the model's parameter dict: an independent
    reference (sliding-window convs, reshape max-pool, strided-assignment up-convs)."""

    def conv(x, p, pad):
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        size = p["kernel"].shape[0]
        windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
        return np.einsum("bhwcij,ijco->bhwo", windows, p["kernel"]) + p["bias"]

    def double(x, p):
        pad = 1 if padding == "same" else 0
        return np.maximum(conv(np.maximum(conv(x, p["conv1"], pad), 0), p["conv2"], pad), 0)

    def upconv(x, p):
        batch, height, width, _ = x.shape
        out = np.zeros((batch, 2 * height, 2 * width, p["kernel"].shape[-1]))
        for i in range(2):
            for j in range(2):
                out[:, i::2, j::2] = x @ p["kernel"][i, j] + p["bias"]
        return out

    skips = []
    for level in range(depth):
        x = double(x, params[f"down{level}"])
        skips.append(x)
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).max((2, 4))
    x = double(x, params["bottleneck"])
    for level in reversed(range(depth)):
        x = upconv(x, params[f"upconv{level}"])
        skip = skips[level]
        top, left = (skip.shape[1] - x.shape[1]) // 2, (skip.shape[2] - x.shape[2]) // 2
        skip = skip[:, top : top + x.shape[1], left : left + x.shape[2]]
        x = double(np.concatenate([skip, x], -1), params[f"up{level}"])
    return conv(x, params["head"], 0)


@pytest.mark.parametrize(("padding", "depth", "size"), [("valid", 1, 20), ("same", 2, 16)])
def test_unet_matches_numpy_reference(padding, depth, size):
    model = UNet(3, width=4, depth=depth, padding=padding, norm="none", conv_impl="plain")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 1)).astype(np.float32)
    shapes = nn_unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)))
    params = jax.tree.map(
        lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes["params"]
    )
    logits = jax.jit(model.apply, static_argnames="train")({"params": params}, x, train=False)
    expected = _numpy_unet(jax.tree.map(np.float64, params), x.astype(np.float64), depth, padding)
    assert logits.shape == expected.shape
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)


def _torch_unet(width: int, depth: int, in_channels: int, num_classes: int, padding: int):
    """A tiny reference U-Net in torch (the paper's structure, no norm)."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def double(cin, cout):
        return tnn.Sequential(
            tnn.Conv2d(cin, cout, 3, padding=padding),
            tnn.ReLU(),
            tnn.Conv2d(cout, cout, 3, padding=padding),
            tnn.ReLU(),
        )

    class Reference(tnn.Module):
        def __init__(self):
            super().__init__()
            widths = [width * 2**i for i in range(depth + 1)]
            self.down = tnn.ModuleList(
                double(c, w) for c, w in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
            )
            self.bottleneck = double(widths[-2], widths[-1])
            self.upconv = tnn.ModuleList(tnn.ConvTranspose2d(2 * w, w, 2, 2) for w in widths[:-1])
            self.up = tnn.ModuleList(double(2 * w, w) for w in widths[:-1])
            self.head = tnn.Conv2d(width, num_classes, 1)

        def forward(self, x):
            skips = []
            for block in self.down:
                x = block(x)
                skips.append(x)
                x = tnn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for level in reversed(range(depth)):
                x = self.upconv[level](x)
                skip = skips[level]
                top = (skip.shape[2] - x.shape[2]) // 2
                left = (skip.shape[3] - x.shape[3]) // 2
                skip = skip[:, :, top : top + x.shape[2], left : left + x.shape[3]]
                x = self.up[level](torch.cat([skip, x], 1))
            return self.head(x)

    return torch, Reference()


@pytest.mark.slow  # importing torch alone takes seconds
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_matches_torch_reference_with_copied_weights(padding):
    depth = 1 if padding == "valid" else 2
    torch, reference = _torch_unet(4, depth, 1, 3, padding=0 if padding == "valid" else 1)
    model = UNet(3, width=4, depth=depth, padding=padding, norm="none", conv_impl="plain")
    size = 20 if padding == "valid" else 16
    x = np.random.default_rng(0).normal(size=(2, size, size, 1)).astype(np.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    params = nn_unbox(variables["params"])

    def conv(module):
        return {
            "kernel": module.weight.detach().numpy().transpose(2, 3, 1, 0),
            "bias": module.bias.detach().numpy(),
        }

    def double(seq):
        return {"conv1": conv(seq[0]), "conv2": conv(seq[2])}

    copied = {"bottleneck": double(reference.bottleneck), "head": conv(reference.head)}
    for level in range(depth):
        copied[f"down{level}"] = double(reference.down[level])
        copied[f"up{level}"] = double(reference.up[level])
        upconv = reference.upconv[level]
        copied[f"upconv{level}"] = {
            "kernel": upconv.weight.detach().numpy().transpose(2, 3, 0, 1),
            "bias": upconv.bias.detach().numpy(),
        }
    assert jax.tree.map(np.shape, copied) == jax.tree.map(np.shape, params)
    logits = jax.jit(model.apply, static_argnames="train")({"params": copied}, x, train=False)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), expected.transpose(0, 2, 3, 1), atol=1e-4)


def nn_unbox(tree):
    """Plain arrays (or shapes) of boxed parameters."""
    return nn.meta.unbox(tree)


@pytest.mark.slow
def test_segment_unet_experiment_trains_and_reports_per_class_iou(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxdl",
            "train",
            "--config",
            "experiments/segment_unet.py:width=32,epochs=3,num_train=400",
            "--workdir",
            str(tmp_path),
        ],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["per_class_iou"]) == {"background", *map(str, range(10))}
    assert results["per_class_iou"]["background"] > 0.8
    assert 0.0 < results["miou"] <= 1.0 and "val_miou" in results
    for plot in ("mask_overlays.png", "per_class_iou.png"):  # drawn at the end of training
        assert (tmp_path / "plots" / plot).stat().st_size > 0


# --- ignore_index: pixels labelled with it count nowhere ---------------------------------------


def _ignored_case(seed=4, classes=3, shape=(2, 5, 6)):
    """Labels with a third of their pixels marked 255 (ignored), and random logits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, shape).astype(np.int32)
    labels[rng.random(shape) < 0.33] = 255
    logits = rng.normal(size=(*shape, classes)).astype(np.float32)
    return labels, logits


def _task_loss(task, logits, labels):
    batch = {"inputs": jnp.zeros((*labels.shape, 1)), "labels": labels}
    return jax.jit(lambda lg, b: task.loss(lambda x: lg, b))(logits, batch)


def test_ignore_index_loss_is_the_mean_over_counted_pixels():
    labels, logits = _ignored_case()
    valid = labels != 255
    # NumPy references (float64) over the counted pixels only.
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cross_entropy = -np.mean(np.log(probs[valid, labels[valid]]))
    onehot = np.eye(3)[labels[valid]]
    inter, total = (probs[valid] * onehot).sum(0), (probs[valid] + onehot).sum(0)
    dice = 1 - np.mean((2 * inter + 1) / (total + 1))
    plain = SemanticSegmentation((5, 6, 1), 3, ignore_index=255)
    mixed = SemanticSegmentation((5, 6, 1), 3, dice_weight=0.5, ignore_index=255)
    loss, metrics = _task_loss(plain, logits, labels)
    assert float(loss) == pytest.approx(cross_entropy, rel=1e-5)
    accuracy = np.mean(logits.argmax(-1)[valid] == labels[valid])
    assert float(metrics["pixel_accuracy"]) == pytest.approx(accuracy)
    assert float(_task_loss(mixed, logits, labels)[0]) == pytest.approx(
        cross_entropy + 0.5 * dice, rel=1e-5
    )
    # An ignored pixel's logits do not matter.
    changed = logits.copy()
    changed[~valid] = 100.0 * np.random.default_rng(0).normal(size=changed[~valid].shape)
    assert float(_task_loss(mixed, changed, labels)[0]) == pytest.approx(float(loss + 0.5 * dice))


@pytest.mark.slow  # importing torch alone takes seconds
def test_ignore_index_cross_entropy_equals_torch():
    torch = pytest.importorskip("torch")
    labels, logits = _ignored_case(seed=5)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 3, 1, 2),
        torch.from_numpy(labels).long(),
        ignore_index=255,
    )
    task = SemanticSegmentation((5, 6, 1), 3, ignore_index=255)
    assert float(_task_loss(task, logits, labels)[0]) == pytest.approx(float(expected), rel=1e-5)


def test_an_all_ignored_batch_has_a_zero_loss_not_nan():
    labels = np.full((2, 4, 4), 255, np.int32)
    logits = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    task = SemanticSegmentation((4, 4, 1), 3, dice_weight=1.0, ignore_index=255)
    loss, metrics = _task_loss(task, logits, labels)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)  # cross-entropy 0, Dice (0 + 1) / (0 + 1)
    assert float(metrics["pixel_accuracy"]) == 0.0
    grads = jax.grad(lambda lg: _task_loss(task, lg, labels)[0])(logits)
    assert np.all(np.asarray(grads) == 0.0)
    batch = {"inputs": np.zeros((2, 4, 4, 1)), "labels": labels, EXAMPLE_MASK: np.ones(2)}
    sums = jax.tree.map(np.asarray, task.eval_sums(lambda x: logits, batch))
    results = task.summarize(sums)
    assert results["loss"] == 0.0 and np.asarray(sums["confusion"]).sum() == 0


def test_ignore_index_metrics_match_sklearn_on_counted_pixels():
    labels, logits = _ignored_case(seed=6, classes=4, shape=(4, 6, 6))
    task = SemanticSegmentation((6, 6, 1), 4, ignore_index=255)
    mask = np.array([1, 1, 1, 0], np.float32)  # the last example is padding
    batch = {"inputs": np.zeros((4, 6, 6, 1)), "labels": labels, EXAMPLE_MASK: mask}
    sums = jax.tree.map(
        np.asarray, jax.jit(lambda lg, b: task.eval_sums(lambda x: lg, b))(logits, batch)
    )
    counted = (labels != 255) & (mask[:, None, None] > 0)
    predictions = logits.argmax(-1)
    expected = sk_confusion_matrix(labels[counted], predictions[counted], labels=range(4))
    np.testing.assert_array_equal(sums["confusion"], expected)
    results = task.summarize(sums)
    assert results == {**results, **segmentation_metrics(expected)}
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    safe = np.where(counted, labels, 0)
    nll = -np.log(np.take_along_axis(probs, safe[..., None], -1)[..., 0])
    assert results["loss"] == pytest.approx(nll[counted].mean(), rel=1e-5)


def test_predict_confusion_and_overlays_leave_ignored_pixels_out(tmp_path):
    from jaxdl.tasks.segmentation import pixel_confusion

    labels, logits = _ignored_case(seed=7)
    predictions = logits.argmax(-1)
    valid = labels != 255
    np.testing.assert_array_equal(
        pixel_confusion(labels, predictions, 3, ignore_index=255),
        sk_confusion_matrix(labels[valid], predictions[valid], labels=range(3)),
    )
    path = plot_mask_overlays(np.ones((2, 5, 6, 1)), labels, predictions, 3, tmp_path / "o.png")
    assert path.stat().st_size > 0  # ignored pixels drawn white, not an index error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1, r"ignore_index 1 is a class id \(classes are 0..2\)"),
        (255.0, "ignore_index must be a whole number"),
        (True, "ignore_index must be a whole number"),
        ("255", "ignore_index must be a whole number"),
    ],
)
def test_bad_ignore_index_is_a_one_line_error(value, message):
    with pytest.raises(ValueError, match=message) as raised:
        SemanticSegmentation((4, 4, 1), 3, ignore_index=value)
    assert "\n" not in str(raised.value)
    assert SemanticSegmentation((4, 4, 1), 3, ignore_index=-1).ignore_index == -1
    assert SemanticSegmentation((4, 4, 1), 3, ignore_index=np.int64(3)).ignore_index == 3


# --- end-of-training plots -----------------------------------------------------------------------


def test_end_of_run_report_draws_mask_overlays_with_the_other_plots(tmp_path):
    """The trainer's end-of-run hooks: ``report`` predicts the split's first readable examples
    (one padded batch), ``write_plots`` draws them beside the per-class IoU bars (the training
    runs in the slow tests check the files after ``jaxdl train``)."""
    from jaxdl.data.records import RecordError
    from jaxdl.tasks.segmentation import OVERLAY_EXAMPLES

    class Records:  # record 1 is unreadable (data.on_error='skip')
        def __len__(self):
            return 12

        def __getitem__(self, index):
            if index == 1:
                raise RecordError("unreadable")
            labels = np.full((8, 8), index % 3, np.int32)
            labels[0] = 255  # ignored pixels draw white
            return {"inputs": np.full((8, 8, 1), float(index), np.float32), "labels": labels}

    seen = []

    def outputs(batch):
        seen.append(batch)
        return batch["labels"] % 256 % 3

    task = SemanticSegmentation((8, 8, 1), 3, ignore_index=255)
    assert task.report(outputs, Records(), 16, str(tmp_path / "unused.jsonl")) == {}
    (batch,) = seen
    assert batch["inputs"].shape == (16, 8, 8, 1)  # padded to one compiled batch shape
    shown = [int(v) for v in batch["inputs"][:OVERLAY_EXAMPLES, 0, 0, 0]]
    assert shown == [0, 2, 3, 4, 5, 6]
    task.write_plots({"per_class_iou": {"0": 1.0, "1": 0.5, "2": 0.0}}, str(tmp_path), "")
    assert (tmp_path / "mask_overlays.png").stat().st_size > 0
    assert (tmp_path / "per_class_iou.png").stat().st_size > 0
    assert not (tmp_path / "unused.jsonl").exists()
    # Without a report first (e.g. on several processes) only the IoU bars are drawn.
    task.write_plots({"per_class_iou": {"0": 1.0, "1": 0.5, "2": 0.0}}, str(tmp_path), "_val")
    assert (tmp_path / "per_class_iou_val.png").exists()
    assert not (tmp_path / "mask_overlays_val.png").exists()


@pytest.mark.parametrize("name", ["segment_unet.py", "segment_deeplab.py"])
def test_segmentation_experiments_build_their_model(name):
    from jaxdl.config import load_config
    from jaxdl.experiment import model_kwargs

    config = load_config(str(Path(__file__).parents[1] / "experiments" / name))
    assert config.task.name == "segmentation" and config.data.name == "digit_scenes"
    info = {"num_classes": 11}
    model = get_model(config.model.name, **model_kwargs(config.model, info))
    x = jnp.zeros((2, 32, 32, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (2, 32, 32, 11)
