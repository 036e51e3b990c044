"""Fine-tune the sentiment classifier from a masked-LM pre-trained encoder (``sentiment_mlm.py``).

``textcls_snownlp.py`` (same config arguments; they must equal the pre-training run's so the
encoder's shapes and the tokenizer match) with ``init.from_workdir`` = ``pretrained``: the token
and position embeddings and the encoder are taken from that run's best checkpoint, the
classification head starts fresh. The tokenizer is refitted on the same frozen training split, so
it is the pre-training run's; the trainer checks both ``tokenizer.json`` fingerprints.

    jaxdl train --workdir runs/finetune \\
        --config experiments/sentiment_finetune.py:pretrained=runs/mlm,tokenizer=wordpiece
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg
from jaxdl.errors import ConfigError

# The parameters a TransformerMaskedLM shares with a TransformerClassifier.
ENCODER_PARAMS = (
    "params/token_embed/*",
    "params/pos_embed/*",
    "params/type_embed/*",
    "params/embed_norm/*",
    "params/encoder/*",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        pretrained="",
        epochs=4,
        layers=2,
        width=96,
        max_len=96,
        batch_size=64,
        tokenizer="wordpiece",
        vocab_size=8000,
        learning_rate=5e-4,
        augment_copies=0,
    )
    if not args.pretrained:
        raise ConfigError("sentiment_finetune.py needs pretrained=<masked-LM workdir>")
    base = Path(__file__).with_name("textcls_snownlp.py")
    config = load_config(
        f"{base}:epochs={args.epochs},layers={args.layers},width={args.width},"
        f"max_len={args.max_len},batch_size={args.batch_size},tokenizer={args.tokenizer},"
        f"vocab_size={args.vocab_size},augment_copies={args.augment_copies}"
    )
    config.unlock()
    config.init.from_workdir = args.pretrained
    config.init.take = ENCODER_PARAMS
    config.optimizer.learning_rate = args.learning_rate
    return config
