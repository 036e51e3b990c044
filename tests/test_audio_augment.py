"""Tests for jaxdl.audio.augment: SpecAugment masks and warp, noise mixing, speed perturbation."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.audio import add_noise, spec_augment, speed_perturb

FRAMES, BINS = 120, 80
LENGTHS = jnp.array([120, 90, 15, 1])
# Strictly positive features, so a mask (value 0) is always a visible change.
FEATURES = 1.0 + jax.random.uniform(jax.random.key(0), (4, FRAMES, BINS))


def _augment(**settings):
    return functools.partial(spec_augment, **settings)


MASKS = _augment(time_width=20, max_time_fraction=0.2)
WARP = _augment(freq_masks=0, time_masks=0, time_warp=10)


def test_same_key_gives_same_output_and_different_keys_differ():
    first = MASKS(jax.random.key(1), FEATURES, LENGTHS)
    np.testing.assert_array_equal(first, MASKS(jax.random.key(1), FEATURES, LENGTHS))
    assert not np.array_equal(first, MASKS(jax.random.key(2), FEATURES, LENGTHS))


@pytest.mark.parametrize("augment", [MASKS, WARP], ids=["masks", "warp"])
def test_padded_frames_are_never_touched(augment):
    padded = FEATURES.at[:, 100:].set(-7.0)
    for seed in range(5):
        out = np.asarray(augment(jax.random.key(seed), padded, LENGTHS))
        assert out.shape == padded.shape
        for row, length in enumerate(np.asarray(LENGTHS)):
            np.testing.assert_array_equal(out[row, length:], padded[row, length:])


def test_mask_bands_stay_within_their_count_and_width_bounds():
    for seed in range(10):
        out = np.asarray(MASKS(jax.random.key(seed), FEATURES, LENGTHS))
        for row, length in enumerate(np.asarray(LENGTHS)):
            masked = out[row, :length] == 0.0
            masked_bins = masked.all(axis=0)
            masked_frames = masked.all(axis=1)
            # Every masked entry belongs to a masked frequency band or a masked time band.
            np.testing.assert_array_equal(masked, masked_bins[None, :] | masked_frames[:, None])
            assert masked_bins.sum() <= 2 * 27
            widest = min(20, int(0.2 * length))
            assert masked_frames.sum() <= 2 * widest


def test_adaptive_time_mask_count_is_zero_for_short_utterances():
    augment = _augment(freq_masks=0, time_masks=5, time_mask_fraction=0.02)
    out = augment(jax.random.key(3), FEATURES, LENGTHS)  # floor(0.02 * L) is 0 for L < 50
    np.testing.assert_array_equal(out[2:], FEATURES[2:])
    assert not np.array_equal(out[:1], FEATURES[:1])


def test_time_warp_off_is_identity():
    augment = _augment(freq_masks=0, time_masks=0, time_warp=0)
    np.testing.assert_array_equal(augment(jax.random.key(4), FEATURES, LENGTHS), FEATURES)


def test_time_warp_keeps_endpoints_and_resamples_monotonically():
    ramp = jnp.broadcast_to(jnp.arange(FRAMES, dtype=jnp.float32)[None, :, None], (4, FRAMES, 3))
    changed = False
    for seed in range(5):
        out = np.asarray(WARP(jax.random.key(seed), ramp, LENGTHS))
        for row, length in enumerate(np.asarray(LENGTHS)):
            warped = out[row, :length, 0]
            np.testing.assert_allclose(warped[[0, -1]], [0.0, length - 1], atol=1e-4)
            assert np.all(np.diff(warped) >= -1e-4)  # a warped ramp is still a ramp
        np.testing.assert_array_equal(out[2:], ramp[2:])  # 15 and 1 frames: L <= 2W
        changed |= not np.allclose(out[:2], ramp[:2])
    assert changed


def test_spec_augment_rejects_negative_settings():
    with pytest.raises(ValueError, match="non-negative"):
        spec_augment(jax.random.key(0), FEATURES, LENGTHS, freq_masks=-1)


def _tone(hz: float, num_samples: int = 16000, sample_rate: int = 16000) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(num_samples) / sample_rate).astype(np.float32)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
@pytest.mark.parametrize("noise_length", [700, 16000, 40000])
def test_add_noise_reaches_the_requested_snr(snr_db, noise_length):
    waveform = _tone(440.0)
    noise = np.random.default_rng(0).standard_normal(noise_length).astype(np.float32)
    mixed = add_noise(np.random.default_rng(1), waveform, noise, snr_db)
    assert mixed.shape == waveform.shape and mixed.dtype == waveform.dtype
    added = mixed.astype(np.float64) - waveform
    measured = 10 * np.log10(np.mean(waveform.astype(np.float64) ** 2) / np.mean(added**2))
    assert abs(measured - snr_db) < 1e-3


def test_add_noise_is_seeded_and_handles_silence():
    waveform, noise = _tone(300.0), np.random.default_rng(0).standard_normal(5000)
    np.testing.assert_array_equal(
        add_noise(np.random.default_rng(7), waveform, noise, 5.0),
        add_noise(np.random.default_rng(7), waveform, noise, 5.0),
    )
    silent = add_noise(np.random.default_rng(7), np.zeros(800, np.float32), noise, 5.0)
    np.testing.assert_array_equal(silent, np.zeros(800))
    np.testing.assert_array_equal(
        add_noise(np.random.default_rng(7), waveform, 0 * noise, 5.0), waveform
    )


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_perturb_scales_duration_and_pitch(factor):
    waveform = _tone(440.0)
    faster = speed_perturb(waveform, factor)
    assert abs(faster.size - waveform.size / factor) <= 1
    assert faster.dtype == waveform.dtype
    spectrum = np.abs(np.fft.rfft(faster * np.hanning(faster.size)))
    peak_hz = np.argmax(spectrum) * 16000 / faster.size
    assert abs(peak_hz - 440.0 * factor) < 2.0


def test_speed_perturb_identity_and_bad_factor():
    waveform = _tone(440.0, 100)
    np.testing.assert_array_equal(speed_perturb(waveform, 1.0), waveform)
    with pytest.raises(ValueError, match="positive"):
        speed_perturb(waveform, 0.0)


def test_speech_front_end_benchmark_writes_its_rows(tmp_path):
    """benchmarks/speech_front_end.py smoke run (no torch peer): both jaxdl rows, timed."""
    out = tmp_path / "front_end.json"
    command = [
        sys.executable,
        os.path.join("benchmarks", "speech_front_end.py"),
        "--batch-size=2",
        "--seconds=0.3",
        "--warmup=1",
        "--steps=2",
        "--no-peer",
        f"--out={out}",
    ]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["row"] for row in rows] == ["jaxdl features", "jaxdl augment + features"]
    assert all(row["step_ms_median"] > 0 for row in rows)
    bad = subprocess.run(
        [*command[:2], "--profile-dir=x"], capture_output=True, text=True, env=env, check=False
    )
    assert bad.returncode == 2 and "--profile-dir" in bad.stderr.strip().splitlines()[-1]
