"""Checksums of arrays computed on device, to catch checkpoints damaged on disk.

Each array's bytes are read as 32-bit words ``w[i]`` and reduced to ``sum(w[i] * (2i + 1)) mod
2**32``: multiplying by an odd weight is invertible modulo 2**32, so changing any single word always
changes the sum, and moved words are caught by their position. The reduction runs under ``jit`` on
the (possibly sharded) arrays: no extra host copy of the state is made, only one integer per array
comes back. Orbax itself verifies no content hash, and TensorStore reads a flipped byte back as a
valid number, hence this.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _words(x: jax.Array) -> jax.Array:
    """The array's bytes as a flat uint32 vector (narrow types widened, wide types split)."""
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = np.dtype(x.dtype).itemsize * 8
    if bits == 32:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if bits < 32:
        unsigned = {8: jnp.uint8, 16: jnp.uint16}[bits]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))  # 64-bit: two words each


def _checksum(x: jax.Array) -> jax.Array:
    words = _words(x)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    return [_checksum(leaf) for leaf in leaves]


def key_path_str(key_path: tuple) -> str:
    """A tree key path as ``a/b/0`` (dict keys, sequence indices and attribute names)."""
    return "/".join(
        str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in key_path
    )


def tree_checksums(tree: Any) -> dict[str, int]:
    """``{'params/a/kernel': checksum}`` for every array leaf of ``tree``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [key_path_str(p) for p, _ in flat]
    values = jax.device_get(_checksums([leaf for _, leaf in flat]))
    return {path: int(value) for path, value in zip(paths, values, strict=True)}


def damaged_leaves(tree: Any, expected: dict[str, int]) -> list[str]:
    """Paths whose checksum differs from ``expected`` (paths missing from it are not checked)."""
    actual = tree_checksums(tree)
    return [path for path, value in expected.items() if actual.get(path) != value]
