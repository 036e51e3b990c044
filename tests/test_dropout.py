"""jaxdl's Dropout: its masks against an independent Threefry-2x32 written here from the
Random123 paper, their statistics, flax's Dropout semantics, and sharded masks equal to
unsharded ones."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxdl.layers import Dropout, dropout_keep_mask, realised_drop_rate

KEY = jax.random.key(0)
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
MASK32 = 0xFFFFFFFF


def threefry2x32(key: tuple[int, int], counter: tuple[int, int]) -> tuple[int, int]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123), one block, in Python."""
    ks = (key[0], key[1], 0x1BD11BDA ^ key[0] ^ key[1])
    x0, x1 = (counter[0] + ks[0]) & MASK32, (counter[1] + ks[1]) & MASK32
    for r in range(20):
        x0 = (x0 + x1) & MASK32
        rot = ROTATIONS[r % 8]
        x1 = ((x1 << rot) | (x1 >> (32 - rot))) & MASK32
        x1 ^= x0
        if r % 4 == 3:
            s = (r + 1) // 4
            x0 = (x0 + ks[s % 3]) & MASK32
            x1 = (x1 + ks[(s + 1) % 3] + s) & MASK32
    return x0, x1


def test_reference_threefry_reproduces_the_random123_known_answers():
    assert threefry2x32((0, 0), (0, 0)) == (0x6B200159, 0x99BA4EFE)
    assert threefry2x32((MASK32, MASK32), (MASK32, MASK32)) == (0x1CB996FC, 0xBB002BE7)
    assert threefry2x32((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3)) == (
        0xC4923A9C,
        0x483DF7A0,
    )


@pytest.mark.parametrize("shape", [(3, 10), (2, 3, 8), (5,), (4, 1)])
def test_mask_is_four_16_bit_fields_of_each_threefry_block_along_the_last_axis(shape):
    rate = 0.3
    key = jax.random.key(7)
    words = tuple(int(w) for w in jax.random.key_data(key))
    mask = np.asarray(dropout_keep_mask(key, shape, rate))
    blocks = -(-shape[-1] // 4)
    threshold = round(rate * 65536)
    expected = np.zeros(shape, bool)
    for position in np.ndindex(*shape):
        row = int(np.ravel_multi_index(position[:-1], shape[:-1])) if len(shape) > 1 else 0
        high, low = threefry2x32(words, (0, row * blocks + position[-1] // 4))
        field = [high & 0xFFFF, high >> 16, low & 0xFFFF, low >> 16][position[-1] % 4]
        expected[position] = field >= threshold
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(64, 100, 77), (200, 1000, 1)])
def test_drop_fraction_is_the_realised_rate(rate, shape):
    mask = np.asarray(dropout_keep_mask(KEY, shape, rate))
    realised = realised_drop_rate(rate)
    assert abs(realised - rate) <= 0.5 / 65536
    n = mask.size
    tolerance = 5 * np.sqrt(realised * (1 - realised) / n)  # 5 binomial standard deviations
    assert abs((1 - mask.mean()) - realised) < tolerance


def test_entries_sharing_a_block_or_a_neighbour_are_independent():
    mask = np.asarray(dropout_keep_mask(KEY, (4096, 64), 0.5)).astype(float)
    # Every lag inside a block (1-3), across blocks (4) and across rows.
    for a, b in [
        (mask[:, :-1], mask[:, 1:]),
        (mask[:, :-2], mask[:, 2:]),
        (mask[:, :-3], mask[:, 3:]),
        (mask[:, :-4], mask[:, 4:]),
        (mask[:-1], mask[1:]),
    ]:
        correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(correlation) < 5 / np.sqrt(a.size)


def test_same_key_same_mask_other_key_other_mask_raw_keys_alike():
    first = dropout_keep_mask(KEY, (32, 32), 0.5)
    np.testing.assert_array_equal(first, dropout_keep_mask(KEY, (32, 32), 0.5))
    other = dropout_keep_mask(jax.random.fold_in(KEY, 1), (32, 32), 0.5)
    assert np.mean(np.asarray(first) != np.asarray(other)) > 0.3
    np.testing.assert_array_equal(first, dropout_keep_mask(jax.random.PRNGKey(0), (32, 32), 0.5))


def test_other_prng_implementations_scalars_and_extreme_rates_fall_back_to_bernoulli():
    rbg = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(
        dropout_keep_mask(rbg, (16, 8), 0.5), jax.random.bernoulli(rbg, 0.5, (16, 8))
    )
    np.testing.assert_array_equal(
        dropout_keep_mask(KEY, (), 0.5), jax.random.bernoulli(KEY, 0.5, ())
    )
    assert dropout_keep_mask(KEY, (3, 0), 0.5).shape == (3, 0)
    tiny = 1e-7  # under 1/65536: 16 bits cannot express it, so it is drawn exactly
    assert realised_drop_rate(tiny) == tiny
    np.testing.assert_array_equal(
        dropout_keep_mask(KEY, (16, 8), tiny), jax.random.bernoulli(KEY, 1 - tiny, (16, 8))
    )


def test_layer_keeps_flax_dropout_semantics():
    x = jax.random.normal(KEY, (8, 50, 16)) + 3.0
    rngs = {"dropout": jax.random.key(1)}
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
    np.testing.assert_array_equal(
        Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), jnp.zeros_like(x)
    )
    rate = 0.25
    y = Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    kept = np.asarray(y) != 0
    keep_prob = 1 - realised_drop_rate(rate)
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / keep_prob, rtol=1e-6)
    assert 0.2 < 1 - kept.mean() < 0.3
    # A key passed as rng draws dropout_keep_mask's mask of that key.
    y_rng = Dropout(rate).apply({}, x, deterministic=False, rng=jax.random.key(2))
    np.testing.assert_array_equal(
        np.asarray(y_rng) != 0, np.asarray(dropout_keep_mask(jax.random.key(2), x.shape, rate))
    )
    # broadcast_dims share one mask along those axes; it is a subclass of flax's layer.
    shared = Dropout(0.5, broadcast_dims=(1,)).apply({}, x, deterministic=False, rngs=rngs)
    zeros = np.asarray(shared) == 0
    assert np.all(zeros == zeros[:, :1])
    assert isinstance(Dropout(0.1), nn.Dropout)


def test_layer_is_unbiased_and_its_gradient_is_the_scaled_mask():
    x = jnp.full((256, 1024), 2.0)
    layer = Dropout(0.1)
    rngs = {"dropout": jax.random.key(3)}
    y = layer.apply({}, x, deterministic=False, rngs=rngs)
    assert abs(float(y.mean()) - 2.0) < 0.01
    grad = jax.grad(lambda x: layer.apply({}, x, deterministic=False, rngs=rngs).sum())(x)
    np.testing.assert_allclose(grad, np.asarray(y) / 2.0, rtol=1e-6)


@pytest.mark.parametrize("spec", [PartitionSpec("x"), PartitionSpec(None, "x"), PartitionSpec()])
def test_sharded_mask_equals_the_unsharded_one(spec):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    shape = (16, 64)
    expected = np.asarray(dropout_keep_mask(KEY, shape, 0.3))
    sharding = NamedSharding(mesh, spec)
    drop = jax.jit(lambda key: dropout_keep_mask(key, shape, 0.3), out_shardings=sharding)
    mask = drop(KEY)
    assert mask.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(np.asarray(mask), expected)
