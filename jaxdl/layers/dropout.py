"""Dropout whose masks cost a quarter of the random-number hashes of ``flax.linen.Dropout``'s.

``nn.Dropout`` draws its mask with ``jax.random.bernoulli``, which under jax's default
(partitionable) threefry hashes one 64-bit Threefry-2x32 block per element and keeps 32 bits of
it. On CPU that made the masks ~30 % of the speech Conformer's train step at dropout 0.1
(benchmarks/README.md, issue 16). ``dropout_keep_mask`` takes four 16-bit fields from every
block instead, still one block per position of a global index, so it partitions like jax's own
bits (a sharded mask equals the unsharded one) and needs no ``jax_enable_x64``. The rate is
realised to the nearest 1/65,536 (0.1 -> 0.100006) and kept values are scaled by the realised
keep probability, so the layer stays unbiased. No maintained library packs Threefry's output
into dropout masks; keys of other PRNG implementations (rbg) take ``jax.random.bernoulli``.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

FIELD_BITS = 16
FIELDS_PER_BLOCK = 64 // FIELD_BITS
FIELD_LEVELS = 1 << FIELD_BITS


def realised_drop_rate(rate: float) -> float:
    """The drop probability ``dropout_keep_mask`` realises for ``rate``: the nearest multiple
    of 1/65,536 (a rate closer to 0 or 1 than that is drawn exactly, by ``bernoulli``)."""
    threshold = round(rate * FIELD_LEVELS)
    return threshold / FIELD_LEVELS if 0 < threshold < FIELD_LEVELS else rate


def _threefry_key_words(key: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """The two 32-bit words of a threefry2x32 key (typed or raw uint32[2]), else None."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        key = jax.random.key_data(key)
    elif jax.config.jax_default_prng_impl != "threefry2x32" or key.shape != (2,):
        return None
    return key[0], key[1]


def _linear_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major positions of ``shape`` from broadcasted iotas (elementwise, so the SPMD
    partitioner computes each shard's part locally, as jax's ``iota_2x32_shape``)."""
    strides = np.cumprod((*shape[1:], 1)[::-1])[::-1]
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    return index


def dropout_keep_mask(key: jax.Array, shape: Sequence[int], rate: float) -> jax.Array:
    """A boolean mask of ``shape``, each entry False with probability ``realised_drop_rate(rate)``.

    Block ``i`` of the Threefry-2x32 stream (counter ``(0, i)``) gives the four entries
    ``4i..4i+3`` along the last axis of the row-major layout with that axis padded to a multiple
    of 4. Falls back to ``jax.random.bernoulli`` for keys of other implementations, scalars,
    rates that 16 bits cannot express and masks of 2^34 entries or more.
    """
    shape = tuple(int(d) for d in shape)
    threshold = round(rate * FIELD_LEVELS)
    words = _threefry_key_words(key)
    blocks = -(-shape[-1] // FIELDS_PER_BLOCK) if shape else 0
    block_shape = (*shape[:-1], blocks)
    expressible = 0 < threshold < FIELD_LEVELS
    if words is None or not shape or not expressible or np.prod(block_shape) >= 2**32:
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    counts = _linear_index(block_shape)
    high, low = threefry2x32_p.bind(*words, jnp.zeros_like(counts), counts)
    low_field = jnp.uint32(FIELD_LEVELS - 1)
    fields = jnp.stack([high & low_field, high >> 16, low & low_field, low >> 16], axis=-1)
    fields = fields.reshape(*shape[:-1], blocks * FIELDS_PER_BLOCK)[..., : shape[-1]]
    return fields >= jnp.uint32(threshold)


class Dropout(nn.Dropout):
    """``flax.linen.Dropout`` (same fields, same call) drawing ``dropout_keep_mask``'s masks.

    A subclass, so code that looks for ``nn.Dropout`` layers (MC dropout in
    ``jaxdl.uncertainty``) finds these too.
    """

    @nn.compact
    def __call__(
        self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
    ) -> jax.Array:
        """``inputs`` with a random ``rate`` of its entries zeroed and the rest scaled by the
        inverse of the realised keep probability; unchanged when deterministic or at rate 0."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:  # no mask: its gradient would be NaN
            return jnp.zeros_like(inputs)
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        keep = jnp.broadcast_to(dropout_keep_mask(rng, shape, self.rate), inputs.shape)
        keep_prob = jnp.asarray(1.0 - realised_drop_rate(self.rate), inputs.dtype)
        return lax.select(keep, inputs / keep_prob, jnp.zeros_like(inputs))
