"""Byte-level decoder language model on CPython's own documentation (``pydoc_data.topics``).

79 help topics (~465k characters of English) ship with every Python install: no download. Whole
topics go to train/val/test (validation topics are disjoint from training topics). A 4-layer
pre-LN Transformer reads 128-byte windows; ``results.json`` reports perplexity next to a unigram
model fitted on the training bytes, scored on the same targets. Trains on 2 CPU cores in minutes.

    jaxdl train --config experiments/lm_pydoc.py --workdir runs/lm
    jaxdl train --config experiments/lm_pydoc.py:steps=3000,layers=6 --workdir runs/lm6
"""

import ml_collections
from ml_collections import config_dict

from jaxdl import config_sections as sections
from jaxdl.config import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, steps=600, layers=4, width=128, seq_len=128, batch_size=32)
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "pydoc_lm"
    config.data.options = ml_collections.ConfigDict({"seq_len": args.seq_len})
    config.data.split_fractions = (0.8, 0.1, 0.1)
    config.data.split_seed = 0
    config.data.worker_count = 0

    config.task = ml_collections.ConfigDict({"name": "language_modeling"})

    config.model = ml_collections.ConfigDict()
    config.model.name = "transformer_lm"
    config.model.vocab_size = 0  # 0: from the data (256 bytes)
    config.model.num_layers = args.layers
    config.model.num_heads = 4
    config.model.embed_dim = args.width
    config.model.mlp_dim = 4 * args.width
    config.model.max_len = args.seq_len
    config.model.dropout_rate = 0.1
    config.model.dtype = "float32"
    config.model.scan_layers = True
    config.model.remat_policy = "none"
    config.model.attention_impl = "auto"  # cuDNN fused attention on GPU in bf16, else XLA
    config.model.qkv_fused = False  # True: one [embed, 3, heads, head_dim] projection
    # False: logits stay in model.dtype (bf16 on GPU) and the loss upcasts inside its
    # reductions, so no float32 [B, T, vocab] copy is written; same loss and gradients.
    config.model.cast_logits_to_fp32 = True

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    # Decays kernels only: biases and norm scales are exempt. Add
    # config.optimizer.decay_bias_and_norm = True to decay every parameter, as
    # torch.optim.SGD/Adam(model.parameters(), weight_decay=...) does.
    config.optimizer.weight_decay = 0.1
    config.optimizer.clip_global_norm = 1.0

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 100
    config.schedule.min_value = 1e-4
    # True: the rate changes once per epoch only, as a torch scheduler stepped per epoch
    # (e.g. ExponentialLR) or Keras' staircase=True does.
    config.schedule.staircase = False

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = args.steps
    config.train.num_epochs = config_dict.placeholder(int)
    config.train.batch_size = args.batch_size
    config.train.per_device_batch_size = config_dict.placeholder(int)
    config.train.eval_batch_size = 64
    config.train.eval_every_steps = 100
    config.train.microbatches = 1
    # Non-finite loss/gradients: "stop" | "skip" (drop the update; stop after max_nonfinite_skips
    # in a row) | "rollback" (to the last finite checkpoint, learning rate x rollback_lr_factor).
    config.train.on_nonfinite = "stop"
    config.train.max_nonfinite_skips = 10
    config.train.rollback_lr_factor = 0.5
    config.train.max_rollbacks = 3

    config.init = sections.init(take=("params/*",))
    config.early_stopping = sections.early_stopping("val_loss", "min")
    config.checkpoint = sections.checkpoint(max_to_keep=2, every_steps=100)
    config.mesh = sections.mesh("dp")
    config.distributed = sections.distributed()
    config.logging = sections.logging(every_steps=50)
    return config
