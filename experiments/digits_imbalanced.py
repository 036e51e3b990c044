"""The default digits experiment with a class-imbalanced train split, to compare the remedies.

``data.imbalance`` keeps 100% of the train examples of classes 0-4 and ``minority`` (10%) of
classes 5-9 (a seeded choice); validation and test stay as split (balanced), so test macro-F1
shows how well the minority classes are learned. A small ResNet-8 trains a fixed number of
steps (``train.num_steps``, warm-up and evaluation cadence in steps) so every remedy sees the
same number of batches, even though oversampling lengthens the epoch. Plain cross-entropy
(no label smoothing) is the baseline; each remedy is one override (docs/imbalance.md):

    jaxdl train --config experiments/digits_imbalanced.py --workdir runs/imb_plain
    jaxdl train --config experiments/digits_imbalanced.py --workdir runs/imb_weighted \\
        --config.task.class_weights=balanced
    jaxdl train --config experiments/digits_imbalanced.py --workdir runs/imb_focal \\
        --config.task.focal_gamma=2
    jaxdl train --config experiments/digits_imbalanced.py --workdir runs/imb_oversample \\
        --config.data.oversample=balanced
    jaxdl train --config experiments/digits_imbalanced.py --workdir runs/imb_smote \\
        --config.data.smote.enabled=true
"""

from pathlib import Path

import ml_collections
from ml_collections import config_dict

from jaxdl import config_sections as sections
from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, depth=8, steps=300, minority=0.1, batch_size=64)
    config = load_config(str(Path(__file__).with_name("digits_resnet.py")))
    config.unlock()
    config.data.imbalance = (1.0,) * 5 + (args.minority,) * 5  # keep fraction per class
    config.data.oversample = config_dict.placeholder(str)  # "balanced": equal classes per epoch
    config.data.smote = sections.smote()  # enabled=true: synthetic minority images (SMOTE)

    config.task.label_smoothing = 0.0
    config.task.class_weights = config_dict.placeholder(str)  # "balanced" (or a list in a file)
    config.task.focal_gamma = 0.0  # focal loss exponent; 0 = cross-entropy

    config.model.depth = args.depth
    config.train.num_steps = args.steps
    config.train.batch_size = args.batch_size
    config.train.eval_every_steps = 30
    config.schedule.warmup_epochs = 0.0
    config.schedule.warmup_steps = 20
    config.lock()
    return config
