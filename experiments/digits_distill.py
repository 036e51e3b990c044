"""Distil the default experiment's ResNet-20 (``runs/digits``) into a ResNet-8 of width 8.

``digits_resnet.py`` with a small student model and ``task.name = 'image_distillation'``: the
student learns from the teacher run's softened predictions (temperature ``temperature``, weight
``alpha``) plus the labels (see ``jaxdl.tasks.distillation``). Same data, augmentation, optimiser
and budget as the default experiment, so training ``digits_resnet.py:depth=8`` with
``--config.model.width=8`` is the student-from-scratch baseline (docs/distillation.md).

    jaxdl train --config experiments/digits_resnet.py --workdir runs/digits   # the teacher
    jaxdl train --config experiments/digits_distill.py --workdir runs/distill_student
    jaxdl train --config experiments/digits_distill.py:teacher=runs/d32,temperature=4,alpha=0.9 \\
        --workdir runs/distill_t2
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        teacher="runs/digits",
        depth=8,
        width=8,
        epochs=30,
        temperature=2.0,
        alpha=0.5,
    )
    base = Path(__file__).with_name("digits_resnet.py")
    config = load_config(f"{base}:depth={args.depth},epochs={args.epochs}")
    config.unlock()
    config.model.width = args.width
    label_smoothing = config.task.label_smoothing
    config.task = ml_collections.ConfigDict()
    config.task.name = "image_distillation"
    config.task.teacher_workdir = args.teacher  # a trained jaxdl workdir (its best checkpoint)
    config.task.temperature = args.temperature  # T > 0: softens both distributions
    config.task.alpha = args.alpha  # weight of the soft (KL) term; 1 - alpha: the labels' CE
    config.task.label_smoothing = label_smoothing  # of the hard-label term
    return config
