"""The pydoc LM recipe on your own text, streamed and packed: one document per non-empty line.

``paths`` is a text file or a directory of ``.txt`` files (``text_lines``), or ``hf=DIR`` a 🤗
``datasets`` directory written by ``save_to_disk`` with a ``text`` column (``hf_text``); or
``array_record=DIR`` text converted by ``jaxdl data convert``. Lines are read per record, tokenised
(``tokenizer=byte|char``; a character vocabulary comes from a seeded sample of the training
lines) and packed into rows of ``seq_len + 1`` tokens: attention stays inside each document and
no target crosses into the next.

    jaxdl train --config experiments/lm_text.py:paths=corpus.txt,steps=2000 --workdir runs/lm
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg
from jaxdl.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg, paths="", hf="", array_record="", tokenizer="byte", seq_len=128, steps=600, workers=0
    )
    base = Path(__file__).with_name("lm_pydoc.py")
    config = load_config(f"{base}:steps={args.steps},seq_len={args.seq_len}")
    config.unlock()
    options = {"tokenizer": args.tokenizer, "seq_len": args.seq_len}
    if args.paths:
        config.data.name = "text_lines"
        options["paths"] = args.paths
    elif args.hf:
        config.data.name = "hf_text"
        options.update(path=args.hf, split="train", text_column="text")
    elif args.array_record:
        config.data.name = "array_record"
        options["path"] = args.array_record
    else:
        raise ConfigError(
            "experiments/lm_text.py needs paths=FILE_OR_DIR, hf=DIR or array_record=DIR"
        )
    config.data.options = ml_collections.ConfigDict(options)
    config.data.worker_count = args.workers
    config.data.stats_max_records = 8192  # lines sampled for the vocabulary and unigram baseline
    config.data.on_error = "raise"  # or "skip": empty or undecodable lines reported, not fatal
    config.data.max_error_fraction = 0.01
    config.model.vocab_size = 0  # from the tokenizer
    config.lock()
    return config
