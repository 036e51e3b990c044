"""Segmentation: a small U-Net on the bundled digit scenes (``data.name='digit_scenes'``).

32x32 canvases with 1-3 upscaled scikit-learn digits, per-pixel masks of 11 classes (background
and the ten digits); test scenes are composed from digit images unseen in training. Per-pixel
cross-entropy plus soft Dice (``dice``); mIoU, per-class IoU and Dice land in results.json.
Measured on 2 shared CPU cores: test mIoU 0.717 (pixel accuracy 0.965, ~10 min); digit classes'
IoU 0.61-0.75, limited by recognising unseen digits (``width=16``: 0.653 in 20 epochs).

    jaxdl train --config experiments/segment_unet.py --workdir runs/segment_unet
    jaxdl train --config experiments/segment_unet.py:width=16,epochs=20 --workdir runs/seg16
"""

from pathlib import Path

import ml_collections

from jaxdl import config_sections as sections
from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg, width=32, depth=2, epochs=25, batch_size=32, dice=0.5, num_train=2000
    )
    base = Path(__file__).with_name("digits_resnet.py")
    config = load_config(f"{base}:epochs={args.epochs},batch_size={args.batch_size}")
    config.unlock()

    config.data = ml_collections.ConfigDict()
    config.data.name = "digit_scenes"
    config.data.split_fractions = (0.7, 0.15, 0.15)  # of the source digits
    config.data.split_seed = 0
    config.data.worker_count = 0
    config.data.options = ml_collections.ConfigDict()
    config.data.options.num_train = args.num_train
    config.data.options.num_val = 300
    config.data.options.num_test = 300
    config.data.options.canvas = 32
    config.data.options.scale = 2
    config.data.options.max_digits = 3

    config.task = ml_collections.ConfigDict()
    config.task.name = "segmentation"
    config.task.dice_weight = args.dice
    del config["augment"]  # image-only augmentations would move pixels away from their mask

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"
    config.model.num_classes = 0  # 0: from the data
    config.model.width = args.width
    config.model.depth = args.depth
    config.model.padding = "same"
    config.model.norm = "batch"
    config.model.dtype = "float32"

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_mode = "decoupled"
    config.optimizer.nesterov = False
    config.schedule.warmup_epochs = 1.0
    config.train.eval_batch_size = 100
    config.early_stopping = sections.early_stopping("val_miou", "max")
    return config
