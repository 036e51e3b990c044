"""Segmentation: a small U-Net on the bundled digit scenes (``data.name='digit_scenes'``).

32x32 canvases with 1-3 upscaled scikit-learn digits, per-pixel masks of 11 classes (background
and the ten digits); test scenes are composed from digit images unseen in training. Per-pixel
cross-entropy plus soft Dice (``dice``); mIoU, per-class IoU and Dice land in results.json.
Training scenes are augmented on device with one random transform per example applied alike to
image and mask: rotation within ±15 degrees, scale 0.9-1.1, shift ±2 px (``rotate``, ``zoom_out``,
``zoom_in``, ``shift``; ``crop`` adds a random crop). ``interp=nearest`` resamples the image by the
nearest pixel like the mask: these masks threshold their image, and bilinear resampling blurs
that edge (background IoU 0.992 instead of 0.999).

More scenes beat more epochs: the errors sit where two digits overlap, and 4,000 scenes show
twice as many overlaps as 2,000 (composed from the same training digits).

Measured on 2 CPU cores (test split; per-class IoU of the digits):
  defaults (width 48, 4,000 scenes, 12 epochs = 1,500 steps, augmented, nearest): test mIoU
      0.757 (val 0.780), pixel accuracy 0.971, mean Dice 0.860; digits 0.69-0.77, background
      0.999; 32 min of training on 2026-11-26 with the machine otherwise idle (1.2-1.4 s a step;
      the rows below ran at ~0.55 s a step on an earlier day)
  2,000 scenes, 20 epochs (1,250 steps):                        0.748 (val 0.764), 11.4 min
  2,000 scenes, 18 epochs:                                      0.742 (val 0.766, ~15 min)
  2,000 scenes, 24 epochs:                                      0.749 (val 0.763): a plateau
  width 32, 25 epochs, no augmentation (previous default):      0.717 (~10 min)
  width 32, 25 epochs, augmented (bilinear):                    0.720 (~17 min under load)
  width 32, depth 3, 25 epochs, augmented (bilinear):           0.704 (~15 min)
Errors are mostly digits confused where two digits overlap (the image keeps the brighter ink).

    jaxdl train --config experiments/segment_unet.py --workdir runs/segment_unet
    jaxdl predict --workdir runs/segment_unet   # mask overlays + per-class IoU in W/analysis
    jaxdl train --config experiments/segment_unet.py:num_train=2000,epochs=20 --workdir runs/seg2k
"""

from pathlib import Path

import ml_collections
from ml_collections import config_dict

from jaxdl import config_sections as sections
from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        width=48,
        depth=2,
        epochs=12,
        batch_size=32,
        dice=0.5,
        num_train=4000,
        lr=3e-3,
        rotate=15.0,
        zoom_out=0.9,
        zoom_in=1.1,
        crop=0,
        shift=2,
        interp="nearest",
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
    # Joint image + mask augmentation on device (no flips: mirrored digits are other shapes).
    config.task.rotate_degrees = args.rotate
    config.task.scale_range = (args.zoom_out, args.zoom_in)
    config.task.crop = args.crop
    config.task.max_shift = args.shift
    config.task.interpolation = args.interp
    # A label whose pixels count nowhere (e.g. 255 as Pascal VOC); None: every pixel counts.
    config.task.ignore_index = config_dict.placeholder(int)
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
    config.optimizer.learning_rate = args.lr
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_mode = "decoupled"
    config.optimizer.nesterov = False
    config.schedule.warmup_epochs = 1.0
    config.train.eval_batch_size = 100
    config.early_stopping = sections.early_stopping("val_miou", "max")
    return config
