"""Segmentation: a small DeepLabv3 on the bundled digit scenes (``data.name='digit_scenes'``).

The data, task (per-pixel cross-entropy plus soft Dice, joint image + mask augmentation) and
optimiser are ``segment_unet.py``'s; only the model differs: DeepLabv3 (ASPP head on a dilated
ResNet) scaled down for 2 CPU cores. torchvision's ``deeplabv3_resnet50`` (39.6 M parameters,
7x7/2 stem + max-pool, output stride 8) would leave a 32x32 scene a 4x4 feature map and take
hours here; this one is a ResNet-18 layout at base width ``width`` (8: channels 8-64) with the
CIFAR stem (one 3x3/1 conv, ``model.stem='cifar'``), so output stride 8 (stages 3 and 4 dilated)
gives 16x16 features of a 32x32 scene, and an ASPP of ``head`` channels with atrous rates
(2, 4, 6) scaled to that map: 298,163 parameters.

Measured once on 2 CPU cores shared with another job's benchmark (the run got one core's worth):
  defaults (width 8, head 48, 10 epochs, augmented):  test mIoU 0.629 (val 0.646), pixel accuracy
      0.940, mean Dice 0.767, 7.3 min of training (8.1 min wall with data and compilation);
      background 0.970, digits 0.53-0.66. Below segment_unet.py's 0.748 (not investigated;
      likely the U-Net's full-resolution skips, where this upsamples 16x16 logits bilinearly).
  Model forward + backward per batch of 32 (same machine and load, no optimizer): width 8 OS 8
      0.52 s, width 16 OS 8 1.49 s, width 16 OS 16 0.60 s, width 12 OS 8 1.02 s.

    jaxdl train --config experiments/segment_deeplab.py --workdir runs/segment_deeplab
    jaxdl predict --workdir runs/segment_deeplab   # mask overlays + per-class IoU in W/analysis
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        width=8,
        depth=18,
        head=48,
        output_stride=8,
        epochs=10,
        batch_size=32,
        num_train=2000,
        lr=3e-3,
    )
    base = Path(__file__).with_name("segment_unet.py")
    config = load_config(
        f"{base}:epochs={args.epochs},batch_size={args.batch_size},num_train={args.num_train},"
        f"lr={args.lr}"
    )
    config.unlock()
    config.model = ml_collections.ConfigDict()
    config.model.name = "deeplabv3"
    config.model.num_classes = 0  # 0: from the data
    config.model.depth = args.depth
    config.model.width = args.width
    config.model.stem = "cifar"
    config.model.output_stride = args.output_stride
    config.model.atrous_rates = (2, 4, 6)
    config.model.head_features = args.head
    config.model.dropout_rate = 0.1
    config.model.norm = "batch"
    config.model.dtype = "float32"
    return config
