"""Transfer learning on scikit-learn's digits: pre-train on digits 0-4, fine-tune on 5-9 with a few
examples per class, and compare with training the same ResNet on those few examples from scratch.

``python experiments/digits_transfer.py [--shots 5] [--steps 50,150] [--out runs/digits_transfer]``
writes the two class subsets as image folders under ``--out``, then trains with this file's config
(``folder_resnet.py`` on 8x8 images, a ResNet-8):

- ``pretrain``: classes 0-4, all their images (70/15/15 split), once;
- ``finetune_<steps>``: classes 5-9, ``shots`` training images per class, starting from
  ``pretrain``'s best checkpoint with a new head (``init.reinit``) and the ``transfer`` section's
  fields (``--stages`` -> ``trainable_stages``, ``--backbone-lr-scale``), for each step budget;
- ``scratch_<steps>``: the same data and budget, fresh weights.

The test split (classes 5-9, about 70% of their images) is the same for all; the script prints the
test accuracies per budget. Measured (5 shots, all layers fine-tuned at the full learning rate,
seed 0, 2 CPU cores, ~4 min): 50 steps: fine-tuned **0.847** vs scratch 0.788; 150 steps:
fine-tuned 0.890 vs scratch 0.928. The pre-trained start converges faster (validation 0.91 at step
50 against scratch's 0.69) but, with features learnt from five other digits only, ends below a
small network trained to convergence on the new digits. Head-only (``--stages 0``): 0.717 at 150.
As a config: ``experiments/digits_transfer.py:root=DIR,stage=finetune,...``.
"""

import argparse
import json
import os
from pathlib import Path

import ml_collections

from jaxdl import config_sections as sections
from jaxdl.config import load_config, parse_config_arg
from jaxdl.errors import ConfigError

STAGES = ("pretrain", "finetune", "scratch")
SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        root="",
        stage="pretrain",
        source="",
        train_fraction=0.7,
        epochs=30,
        steps=150,
        stages=-1,
        backbone_lr_scale=1.0,
    )
    if args.stage not in STAGES:
        raise ConfigError(f"digits_transfer.py: stage must be one of {STAGES}, got {args.stage!r}")
    folder = "source" if args.stage == "pretrain" else "target"
    config = load_config(
        f"{Path(__file__).with_name('folder_resnet.py')}:root={os.path.join(args.root, folder)},"
        f"image_size=8,epochs={args.epochs}"
    )
    config.unlock()
    config.model.depth = 8
    config.augment.flip_left_right = False  # digits are not mirror-symmetric
    val = 0.15 if args.stage == "pretrain" else 0.1
    config.data.split_fractions = (args.train_fraction, val, 1.0 - args.train_fraction - val)
    config.train.batch_size = 32
    if args.stage != "pretrain":  # a few images: count steps, not (one-step) epochs
        config.train.batch_size = 16  # at most the training images (5 classes x 4 shots)
        config.train.num_steps = args.steps
        config.train.eval_every_steps = 25
        config.schedule.warmup_epochs = 0.0
    config.transfer = sections.transfer()
    if args.stage == "finetune":
        config.init.from_workdir = args.source
        config.init.reinit = ("params/head/*",)
        config.transfer.trainable_stages = None if args.stages < 0 else args.stages
        config.transfer.backbone_lr_scale = args.backbone_lr_scale
    config.lock()
    return config


def write_folders(root: str) -> dict[str, int]:
    """Digits 0-4 under ``root/source/<digit>/``, 5-9 under ``root/target/<digit>/`` (PNG,
    grey levels 0-16 scaled to 0-255); returns the image count of each folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {"source": 0, "target": 0}
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = "source" if label in SOURCE_CLASSES else "target"
        directory = os.path.join(root, folder, str(label))
        os.makedirs(directory, exist_ok=True)
        pixels = (image * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{index}.png"))
        counts[folder] += 1
    return counts


def main() -> None:
    """Trains the three runs and prints their test accuracies (see the module docstring)."""
    from jaxdl.experiment import build_experiment
    from jaxdl.train import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/digits_transfer")
    parser.add_argument("--shots", type=int, default=5, help="training images per new class, >= 4")
    parser.add_argument("--epochs", type=int, default=30, help="pre-training epochs")
    parser.add_argument("--steps", default="50,150", help="few-shot step budgets, comma-separated")
    parser.add_argument(
        "--stages", type=int, default=-1, help="fine-tuned stages (0: head only, -1: all)"
    )
    parser.add_argument("--backbone-lr-scale", type=float, default=1.0)
    args = parser.parse_args()
    root = os.path.abspath(args.out)
    counts = write_folders(os.path.join(root, "data"))
    # Stratified split: shots x 5 classes of the target images train, 10% validate, rest test.
    fraction = args.shots * len(TARGET_CLASSES) / counts["target"]
    budgets = [int(steps) for steps in args.steps.split(",")]

    def run(stage: str, steps: int, name: str) -> float:
        arg = (
            f"root={os.path.join(root, 'data')},stage={stage},epochs={args.epochs},"
            f"steps={steps},source={os.path.join(root, 'pretrain')},stages={args.stages},"
            f"backbone_lr_scale={args.backbone_lr_scale}"
        )
        if stage != "pretrain":
            arg += f",train_fraction={fraction}"
        config = load_config(f"{__file__}:{arg}")
        trainer = Trainer(build_experiment(config), os.path.join(root, name), quiet=True)
        return float(trainer.fit()["accuracy"])

    results = {"pretrain": run("pretrain", budgets[0], "pretrain")}
    for steps in budgets:
        results[f"{steps}_steps"] = {
            stage: run(stage, steps, f"{stage}_{steps}") for stage in ("finetune", "scratch")
        }
    print(json.dumps({"shots_per_class": args.shots, "test_accuracy": results}))


if __name__ == "__main__":
    main()
