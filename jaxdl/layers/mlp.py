"""Transformer feed-forward block with logically named kernels."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.dense import Dense
from jaxdl.layers.dropout import Dropout

# 'gelu' is nn.gelu's default tanh approximation (GPT-2's gelu_new); 'gelu_exact' is the erf
# form (BERT's hidden_act='gelu', torch.nn.functional.gelu). A gated activation multiplies the
# activated gate projection by a second, linear one.
MLP_ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
    "silu": nn.silu,
    "swiglu": nn.silu,
}
GATED_ACTIVATIONS = ("swiglu",)


class MlpBlock(nn.Module):
    """Position-wise feed-forward: [batch, length, embed] -> [batch, length, embed].

    ``wi`` [embed, mlp_dim] named ('embed','mlp') -> activation -> dropout -> ``wo``
    [mlp_dim, embed] named ('mlp','embed'): under the default rules a Megatron column-then-row
    split over 'tensor'. The hidden activation is constrained to ('batch','length','mlp').
    ``activation='swiglu'`` (Shazeer 2020, as in Llama) replaces ``wi`` by two projections of
    the same shape and names, ``wi_gate`` and ``wi_up``: hidden = silu(x wi_gate) * (x wi_up).
    """

    mlp_dim: int
    activation: str = "gelu"
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"MlpBlock activation must be one of {sorted(MLP_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.mlp_dim < 1:
            raise ValueError(f"MlpBlock mlp_dim must be >= 1, got {self.mlp_dim}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"MlpBlock dropout_rate must be in [0, 1), got {self.dropout_rate}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block to ``x`` [batch, length, embed]; ``train`` enables dropout."""
        if x.ndim != 3:
            raise ValueError(f"MlpBlock expects [batch, length, embed], got {x.shape}")
        dense = {
            "use_bias": self.use_bias,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "kernel_init": self.kernel_init,
        }
        activation = MLP_ACTIVATIONS[self.activation]
        if self.activation in GATED_ACTIVATIONS:
            gate = Dense(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_gate", **dense)(x)
            up = Dense(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_up", **dense)(x)
            h = activation(gate) * up
        else:
            h = activation(Dense(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi", **dense)(x))
        h = Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = Dense(x.shape[-1], kernel_axes=("mlp", "embed"), name="wo", **dense)(h)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
