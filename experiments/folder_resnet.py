"""The default ResNet recipe on your own image folder, streamed: ``ROOT/<class_name>/<images>``.

Images are decoded and resized per record (in grain worker processes with ``worker_count`` > 0),
split stratified 70/15/15 and standardised with statistics from a seeded sample of at most
``data.stats_max_records`` training images, so host memory does not grow with the folder.

    jaxdl train --config experiments/folder_resnet.py:root=/data/pets,image_size=64 \
        --workdir runs/pets
    jaxdl data convert --config experiments/folder_resnet.py:root=/data/pets --out /data/pets.ar
    jaxdl train --config experiments/folder_resnet.py:array_record=/data/pets.ar --workdir runs/p2
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg
from jaxdl.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg, root="", array_record="", image_size=32, workers=0, epochs=30, batch_size=64
    )
    if not (args.root or args.array_record):
        raise ConfigError(
            "experiments/folder_resnet.py needs root=DIR (an image folder) or array_record=DIR"
        )
    config = load_config(str(Path(__file__).with_name("digits_resnet.py")))
    config.unlock()
    config.data = ml_collections.ConfigDict()
    if args.array_record:  # a folder converted once by `jaxdl data convert`
        config.data.name = "array_record"
        config.data.options = ml_collections.ConfigDict({"path": args.array_record})
    else:
        config.data.name = "image_folder"
        config.data.options = ml_collections.ConfigDict(
            {"root": args.root, "image_size": args.image_size, "color_mode": "rgb"}
        )
    config.data.split_fractions = (0.7, 0.15, 0.15)
    config.data.split_seed = 0
    config.data.standardize = True
    config.data.stats_max_records = 8192
    config.data.worker_count = args.workers
    config.data.on_error = "raise"  # or "skip": unreadable images are reported, not fatal
    config.data.max_error_fraction = 0.01
    config.augment.flip_left_right = True
    config.train.num_epochs = args.epochs
    config.train.batch_size = args.batch_size
    config.lock()
    return config
