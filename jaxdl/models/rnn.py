"""Recurrent sequence classifiers: LSTM, GRU and their bidirectional forms.

Token embedding -> dropout -> ``jaxdl.layers.RecurrentEncoder`` -> pooling -> dropout -> head;
every parameter and activation carries logical axis names.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import RNN_CELLS, Embed, RecurrentEncoder, classifier_head
from jaxdl.layers.dropout import Dropout
from jaxdl.models.registry import register_model

RNN_POOLINGS = ("last", "mean")


@register_model("rnn_classifier")
class RNNClassifier(nn.Module):
    """Recurrent classifier: int tokens [B, T] (right-padded) -> float32 logits [B, num_classes].

    ``pooling='last'`` takes the top layer's state after each row's last real token (for a
    bidirectional encoder the forward state there concatenated with the backward state at the
    first token); ``'mean'`` averages the top layer's outputs over the real tokens. Padding
    never changes the logits. Head kernel [directions * hidden_dim, classes] named
    ('embed','classes').
    """

    vocab_size: int
    num_classes: int
    embed_dim: int
    hidden_dim: int
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    pooling: str = "last"
    dropout_rate: float = 0.0
    pad_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        for name in ("vocab_size", "num_classes", "embed_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"RNNClassifier {name} must be >= 1, got {getattr(self, name)}")
        if self.cell not in RNN_CELLS:
            raise ValueError(
                f"RNNClassifier cell must be one of {sorted(RNN_CELLS)}, got {self.cell!r}"
            )
        if self.pooling not in RNN_POOLINGS:
            raise ValueError(
                f"RNNClassifier pooling must be one of {RNN_POOLINGS}, got {self.pooling!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"RNNClassifier dropout_rate must be in [0, 1), got {self.dropout_rate}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, tokens: jax.Array, padding_mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        """Classify ``tokens`` [B, T]; returns float32 logits [B, num_classes].

        ``padding_mask`` [B, T] (bool or int, nonzero = real token, real tokens first) gives
        each row's length; when None it is ``tokens != pad_id``. ``train`` enables dropout
        (needs a 'dropout' rng).
        """
        if tokens.ndim != 2:
            raise ValueError(
                f"RNNClassifier expects tokens shaped [batch, length], got {tokens.shape}"
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"RNNClassifier expects integer tokens, got dtype {tokens.dtype}")
        if padding_mask is None:
            padding_mask = tokens != self.pad_id
        elif padding_mask.shape != tokens.shape:
            raise ValueError(
                f"RNNClassifier padding_mask must be shaped like tokens {tokens.shape}, "
                f"got {padding_mask.shape}"
            )
        padding_mask = padding_mask != 0
        dropout = Dropout(self.dropout_rate, deterministic=not train)
        x = Embed(
            self.vocab_size,
            self.embed_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="token_embed",
        )(tokens)
        outputs, state = RecurrentEncoder(
            self.hidden_dim,
            cell=self.cell,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="encoder",
        )(dropout(x), padding_mask, train=train)
        if self.pooling == "last":
            pooled = state.hidden[-1]
        else:
            # The encoder zeroes padded outputs; max(count, 1): an all-padding row (e.g. the
            # zeros used at init) pools to zeros.
            count = jnp.maximum(padding_mask.sum(axis=1, keepdims=True), 1).astype(jnp.float32)
            pooled = outputs.astype(jnp.float32).sum(axis=1) / count
        pooled = nn.with_logical_constraint(pooled.astype(self.dtype), ("batch", "embed"))
        return classifier_head(dropout(pooled), self.num_classes, self.dtype, self.param_dtype)


register_model("lstm_classifier")(functools.partial(RNNClassifier, cell="lstm"))
register_model("gru_classifier")(functools.partial(RNNClassifier, cell="gru"))
register_model("bilstm_classifier")(
    functools.partial(RNNClassifier, cell="lstm", bidirectional=True)
)
