"""Stacked LSTM/GRU encoder over padded sequences, built from Flax's ``nn.RNN`` and cells.

Every cell kernel maps features in to gate features, so input kernels [in, hidden] and recurrent
kernels [hidden, hidden] are both named ('embed','mlp') and biases [hidden] ('mlp',); the
per-step outputs are ('batch','length','embed') activations like a Transformer's. FSDP shards
the kernels' input dimension; tensor parallelism would split the gates over 'tensor' and
all-gather the hidden state every step (correct, but recurrences gain little from it).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.dropout import Dropout
from jaxdl.layers.embeddings import EMBED_ACTIVATION_AXES
from jaxdl.parallel.gradients import batch_axes

# OptimizedLSTMCell has LSTMCell's parameters (ii..io, hi..ho) but one fused matmul per step.
RNN_CELLS: dict[str, type[nn.RNNCellBase]] = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
CELL_KERNEL_AXES = ("embed", "mlp")
CELL_BIAS_AXES = ("mlp",)
STATE_AXES = ("layers", "batch", "embed")


class RecurrentState(NamedTuple):
    """Final states after each row's last real step, per layer (fwd/bwd concatenated).

    ``hidden`` [layers, batch, directions * hidden]; ``memory`` is the LSTM cell state ``c``
    of the same shape (None for a GRU). A row without real steps keeps the zero initial state.
    """

    hidden: jax.Array
    memory: jax.Array | None


def _gather_once(params: Any) -> Any:
    """Read an RNN's parameters before its time loop.

    In the explicit data-parallel region (``batch_axes()``) parameters are shards that gather
    on read; read by the cell inside the loop, each gradient would be reduce-scattered once
    per time step. Read here, each is gathered once and its summed gradient reduced once.
    """
    return nn.meta.unbox(params) if batch_axes() else params


def sequence_lengths(padding_mask: jax.Array) -> jax.Array:
    """Real steps per row [batch] (int32) of a right-padded ``padding_mask`` [batch, length]
    (nonzero = real token)."""
    return jnp.sum(padding_mask != 0, axis=-1, dtype=jnp.int32)


class RecurrentEncoder(nn.Module):
    """``num_layers`` recurrent layers: [batch, length, embed] -> outputs
    [batch, length, directions * hidden_dim] and a ``RecurrentState``.

    ``nn.RNN(seq_lengths=...)`` stops each row at its length and ``nn.Bidirectional`` runs the
    backward direction from each row's last real step, so padding never reaches the real
    positions or the final states; padded output positions are zeroed. Dropout (as
    ``torch.nn.LSTM``'s ``dropout``) applies between layers only.
    """

    hidden_dim: int
    cell: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.cell not in RNN_CELLS:
            raise ValueError(
                f"RecurrentEncoder cell must be one of {sorted(RNN_CELLS)}, got {self.cell!r}"
            )
        for name in ("hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"RecurrentEncoder {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"RecurrentEncoder dropout_rate must be in [0, 1), got {self.dropout_rate}"
            )
        super().__post_init__()

    @nn.nowrap
    def _rnn(self, **module_kwargs: Any) -> nn.RNN:
        """One direction of one layer: the configured cell, with logically named parameters.

        ``module_kwargs``: ``name=...`` attaches it to this module, ``parent=None`` leaves it
        to be adopted (by ``nn.Bidirectional``, under forward_rnn/backward_rnn)."""
        cell = RNN_CELLS[self.cell](
            self.hidden_dim,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), CELL_KERNEL_AXES
            ),
            recurrent_kernel_init=nn.with_logical_partitioning(
                nn.initializers.orthogonal(), CELL_KERNEL_AXES
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, CELL_BIAS_AXES),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            parent=None,  # unbound, so the RNN adopts it: params under <rnn>/cell
        )
        rnn = nn.map_variables(
            nn.RNN, "params", trans_in_fn=_gather_once, init=self.is_initializing()
        )
        return rnn(cell, **module_kwargs)

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None = None, *, train: bool
    ) -> tuple[jax.Array, RecurrentState]:
        """Encode ``x`` [batch, length, embed]; ``padding_mask`` [batch, length] (nonzero = real,
        right-padded: real tokens first) defaults to all real. ``train`` enables dropout."""
        if x.ndim != 3:
            raise ValueError(f"RecurrentEncoder expects [batch, length, embed], got {x.shape}")
        if padding_mask is None:
            padding_mask = jnp.ones(x.shape[:2], jnp.bool_)
        elif padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"RecurrentEncoder padding_mask must be {x.shape[:2]}, got {padding_mask.shape}"
            )
        lengths = sequence_lengths(padding_mask)
        real = (padding_mask != 0)[..., None]
        hidden, memory = [], []
        for layer in range(self.num_layers):
            if layer:
                x = Dropout(self.dropout_rate, deterministic=not train)(x)
            name = f"layer_{layer}"
            if self.bidirectional:
                rnn = nn.Bidirectional(self._rnn(parent=None), self._rnn(parent=None), name=name)
                (forward, backward), x = rnn(x, seq_lengths=lengths, return_carry=True)
                carry = jax.tree.map(lambda f, b: jnp.concatenate([f, b], -1), forward, backward)
            else:
                carry, x = self._rnn(name=name)(x, seq_lengths=lengths, return_carry=True)
            x = nn.with_logical_constraint(jnp.where(real, x, 0), EMBED_ACTIVATION_AXES)
            # LSTM carries are (c, h), GRU carries h.
            c, h = carry if self.cell == "lstm" else (None, carry)
            hidden.append(h)
            memory.append(c)

        def stack(states: list[jax.Array]) -> jax.Array:
            started = (lengths > 0)[None, :, None]
            return nn.with_logical_constraint(jnp.where(started, jnp.stack(states), 0), STATE_AXES)

        state = RecurrentState(stack(hidden), stack(memory) if self.cell == "lstm" else None)
        return x, state
