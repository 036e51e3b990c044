"""Speech augmentation: SpecAugment on device, noise mixing and speed perturbation on the host.

`spec_augment` is a pure jax.numpy function of a PRNG key on padded feature batches, so it runs
inside the jitted train step; it only ever touches each example's valid frames. The waveform
helpers are numpy, for the input pipeline, and take their randomness from a numpy Generator.
"""

from __future__ import annotations

import fractions
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _time_warp(features: jax.Array, lengths: jax.Array, draws: jax.Array, window: int) -> jax.Array:
    """Warps the valid frames [0, L) of each example of [B, T, F]; frames past L are kept.

    A centre c ~ U{W, ..., L - 1 - W} moves to c + w, w ~ U(-W, W) (W = `window`, uniforms
    `draws` [B, 2]); both sides are stretched linearly, so frames 0 and L - 1 stay put, and the
    features are linearly interpolated. Examples with L <= 2 W are left unchanged.
    """
    lengths = lengths[:, None]
    last = (lengths - 1).astype(jnp.float32)
    room = lengths - 2 * window
    centre = window + jnp.floor(draws[:, :1] * jnp.maximum(room, 1))
    moved = centre + window * (2.0 * draws[:, 1:] - 1.0)
    steps = jnp.arange(features.shape[1], dtype=jnp.float32)[None, :]
    # Output frame t reads the input at `source`: [0, moved] <- [0, centre] and
    # [moved, last] <- [centre, last]; the maximum() guards only matter for an empty side.
    left = steps * centre / jnp.maximum(moved, 1e-6)
    right = centre + (steps - moved) * (last - centre) / jnp.maximum(last - moved, 1e-6)
    source = jnp.clip(jnp.where(steps <= moved, left, right), 0.0, jnp.maximum(last, 0.0))
    lower = jnp.floor(source).astype(jnp.int32)
    upper = jnp.minimum(lower + 1, jnp.maximum(lengths - 1, 0))
    fraction = (source - lower)[..., None]
    below = jnp.take_along_axis(features, lower[..., None], axis=1)
    above = jnp.take_along_axis(features, upper[..., None], axis=1)
    warped = (below * (1.0 - fraction) + above * fraction).astype(features.dtype)
    apply = (steps < lengths) & (room > 0)
    return jnp.where(apply[..., None], warped, features)


def _bands(draws: jax.Array, size: int, bound: jax.Array, max_width: jax.Array) -> jax.Array:
    """Union [B, size] of bands, one per uniform pair in `draws` [B, M, 2].

    Each band has width ~ U{0..max_width} and starts ~ U{0..bound - width}; `bound` and
    `max_width` are [B, 1] (or broadcast), `max_width` 0 switching a band off.
    """
    width = jnp.floor(draws[..., 0] * (max_width + 1)).astype(jnp.int32)
    start = jnp.floor(draws[..., 1] * (bound - width + 1)).astype(jnp.int32)
    positions = jnp.arange(size)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])
    return jnp.any(inside, axis=-2)


_SPEC_AUGMENT_SETTINGS = (
    "freq_masks",
    "freq_width",
    "time_masks",
    "time_width",
    "max_time_fraction",
    "time_mask_fraction",
    "time_warp",
    "mask_value",
)


@functools.partial(jax.jit, static_argnames=_SPEC_AUGMENT_SETTINGS)
def spec_augment(
    key: jax.Array,
    features: jax.Array,
    lengths: jax.Array,
    *,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: int = 100,
    max_time_fraction: float = 1.0,
    time_mask_fraction: float | None = None,
    time_warp: int = 0,
    mask_value: float = 0.0,
) -> jax.Array:
    """SpecAugment (Park et al. 2019) on features [B, T, F] with valid frame counts [B].

    Each example draws its own masks from `key`, inside its first `lengths` frames only; padded
    frames come back unchanged. In order:
      * time warp (window W = `time_warp`, 0 = off): a point in [W, L - W) of the valid length L
        moves by up to W frames, piecewise-linear resampling of the valid frames;
      * `freq_masks` bands of f ~ U{0..F'} consecutive channels, F' = `freq_width`;
      * `time_masks` bands of t ~ U{0..T'} consecutive frames, T' = min(`time_width`,
        floor(`max_time_fraction` * L)) (the paper's T and p). With `time_mask_fraction` p_M the
        count is adaptive, min(`time_masks`, floor(p_M * L)) (Park et al. 2020), `time_masks`
        being the static cap.
    Masked entries become `mask_value` (0 is the mean after per-utterance normalisation).
    LibriSpeech policies in the paper: LB is W=80, F'=27, 1 freq mask, T'=100, 1 time mask, p=1;
    LD (the defaults here, but time warp off) is the same with 2 and 2 masks. Jitted; the
    keyword settings are static.
    """
    if min(freq_masks, freq_width, time_masks, time_width, time_warp) < 0:
        raise ValueError("mask counts, widths and time_warp must be non-negative")
    batch, frames, bins = features.shape
    lengths = jnp.asarray(lengths, jnp.int32)[:, None]
    # One uniform draw per example for everything: (warp 2, freq masks 2 each, time masks 2 each).
    draws = jax.random.uniform(key, (batch, 2 + 2 * freq_masks + 2 * time_masks))
    if time_warp > 0:
        features = _time_warp(features, lengths[:, 0], draws[:, :2], time_warp)
    freq_draws = draws[:, 2 : 2 + 2 * freq_masks].reshape(batch, freq_masks, 2)
    freq_bands = _bands(freq_draws, bins, jnp.asarray(bins), jnp.asarray(min(freq_width, bins)))
    widest = jnp.minimum(time_width, jnp.floor(max_time_fraction * lengths).astype(jnp.int32))
    if time_mask_fraction is not None:
        active = jnp.floor(time_mask_fraction * lengths).astype(jnp.int32)
        widest = jnp.where(jnp.arange(time_masks) < active, widest, 0)
    time_draws = draws[:, 2 + 2 * freq_masks :].reshape(batch, time_masks, 2)
    time_bands = _bands(time_draws, frames, lengths, widest)
    valid = jnp.arange(frames) < lengths
    masked = (freq_bands[:, None, :] | time_bands[:, :, None]) & valid[:, :, None]
    return jnp.where(masked, jnp.asarray(mask_value, features.dtype), features)


def add_noise(
    rng: np.random.Generator, waveform: np.ndarray, noise: np.ndarray, snr_db: float
) -> np.ndarray:
    """Mixes `noise` into a 1-D waveform at exactly `snr_db` (10 log10 of the power ratio).

    The noise is read cyclically from a random offset (tiled when shorter, cropped when longer)
    and scaled so that mean(x^2) / mean(n^2) = 10^(snr_db / 10). A silent waveform or silent
    noise has no defined ratio and comes back unchanged. Returns the waveform's dtype.
    """
    if waveform.ndim != 1 or noise.ndim != 1 or noise.size == 0:
        raise ValueError(
            f"add_noise needs 1-D waveform and non-empty 1-D noise, got {waveform.shape} and "
            f"{noise.shape}"
        )
    if not waveform.any():
        return waveform.copy()
    signal = waveform.astype(np.float64)
    start = rng.integers(noise.size)
    clip = np.take(noise.astype(np.float64), np.arange(start, start + signal.size), mode="wrap")
    noise_power = np.mean(np.square(clip))
    if noise_power == 0.0:
        return waveform.copy()
    scale = np.sqrt(np.mean(np.square(signal)) / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal + scale * clip).astype(waveform.dtype)


def speed_perturb(waveform: np.ndarray, factor: float, max_denominator: int = 100) -> np.ndarray:
    """Plays a waveform [..., N] `factor` times faster, like sox `speed`: about N / factor samples.

    Pitch and tempo both scale by `factor`. Polyphase resampling by q / p, where p / q is
    `factor` as a fraction with denominator <= `max_denominator` (0.9 -> 9 / 10 exactly).
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    ratio = fractions.Fraction(factor).limit_denominator(max_denominator)
    if ratio == 1:
        return waveform.copy()
    from scipy.signal import resample_poly  # ~0.6 s to import: only when perturbing

    resampled = resample_poly(waveform, ratio.denominator, ratio.numerator, axis=-1)
    return resampled.astype(waveform.dtype)


def perturb_waveforms(
    key: jax.Array,
    audio: jax.Array,
    lengths: jax.Array,
    *,
    speed_factors: tuple[float, float] = (1.0, 1.0),
    noise_prob: float = 0.0,
    snr_db: tuple[float, float] = (10.0, 30.0),
) -> tuple[jax.Array, jax.Array]:
    """On-device waveform augmentation of a padded batch ``audio`` [B, N] with ``lengths`` [B]:
    speed perturbation by a factor drawn uniformly from ``speed_factors`` per utterance (tempo and
    pitch change together, as sox ``speed``; linear-interpolation resampling, enough for
    augmentation), then, with probability ``noise_prob``, uniform white noise at an SNR drawn
    uniformly from ``snr_db`` (signal power over the valid samples). Returns ``(audio,
    lengths)``; a slowed utterance is cut at ``N`` samples and samples past each new length are
    zero.

    The jitted-step counterpart of ``speed_perturb`` / ``add_noise``, so augmentation is drawn
    from the step key and a resumed run draws the same."""
    batch, size = audio.shape
    speed_key, noise_key, apply_key, snr_key = jax.random.split(key, 4)
    low, high = speed_factors
    factors = jax.random.uniform(speed_key, (batch,), minval=low, maxval=high)
    positions = jnp.arange(size, dtype=jnp.float32)
    new_lengths = jnp.minimum(
        jnp.floor((lengths.astype(jnp.float32) - 1) / factors).astype(jnp.int32) + 1, size
    )

    def resample(wave, factor, length):
        # jnp.interp on the uniform grid 0..size-1, without its searchsorted (a binary-search
        # loop over every output sample: 32 ms of a ~1 s step here): the left neighbour of
        # `source` is floor(source).
        source = positions * factor
        left = jnp.minimum(jnp.floor(source), size - 1)
        weight = source - left
        index = left.astype(jnp.int32)
        right = jnp.take(wave, jnp.minimum(index + 1, size - 1))
        out = jnp.take(wave, index) * (1.0 - weight) + right * weight
        return jnp.where(source <= (length - 1).astype(jnp.float32), out, 0.0)

    audio = jax.vmap(resample)(audio, factors, lengths)
    valid = positions[None, :] < new_lengths[:, None]
    power = jnp.sum(jnp.square(audio) * valid, axis=1) / jnp.maximum(new_lengths, 1)
    snr = jax.random.uniform(snr_key, (batch,), minval=snr_db[0], maxval=snr_db[1])
    scale = jnp.sqrt(power / 10.0 ** (snr / 10.0))
    apply = jax.random.uniform(apply_key, (batch,)) < noise_prob
    # Uniform white noise of unit variance (sox's `synth whitenoise` is uniform too). Gaussian
    # samples cost an erf_inv per sample, which XLA:CPU fuses into the STFT's frame gather and
    # recomputes for every frame a sample falls in: 95 ms of a ~1 s speech step, against 5.
    bound = math.sqrt(3.0)
    noise = jax.random.uniform(noise_key, audio.shape, minval=-bound, maxval=bound)
    noise = noise * (scale * apply)[:, None]
    return jnp.where(valid, audio + noise, 0.0).astype(audio.dtype), new_lengths
