"""Tests for jaxdl.audio.features against librosa 0.11 on a seeded chirp plus noise.

Tolerances (float32 here, float64 librosa): spectra to 1e-5 of their peak (measured ~3e-7),
mel filters to 1e-6 of their peak (~7e-8), log-mel and MFCC to 1e-3 absolute (~3e-5).
"""

import dataclasses

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.signal

from jaxdl.audio import (
    FrontEndConfig,
    compute_features,
    frame,
    log_mel_spectrogram,
    mel_filterbank,
    mel_spectrogram,
    mfcc,
    normalize_features,
    num_frames,
    power_spectrogram,
    preemphasis,
    spec_augment,
    window,
)
from jaxdl.audio.features import stft

SAMPLE_RATE = 16000


def _chirp(num_samples: int, seed: int = 0) -> np.ndarray:
    """A 200 Hz -> 6 kHz linear chirp plus white noise, float32."""
    seconds = np.arange(num_samples) / SAMPLE_RATE
    sweep = np.sin(2 * np.pi * (200 * seconds + 5800 / 2 * seconds**2 / seconds[-1]))
    noise = 0.05 * np.random.default_rng(seed).standard_normal(num_samples)
    return (sweep + noise).astype(np.float32)


SIGNAL = _chirp(8000)
REFERENCE = SIGNAL.astype(np.float64)


def _relative_error(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name", ["hann", "hamming"])
@pytest.mark.parametrize("length", [400, 512])
def test_window_matches_scipy_periodic_window(name, length):
    expected = scipy.signal.get_window(name, length, fftbins=True)
    np.testing.assert_allclose(window(name, length), expected, atol=1e-7)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_frame_matches_librosa_frames_of_the_padded_signal(center, pad_mode):
    padded = np.pad(SIGNAL, 200, mode=pad_mode) if center else SIGNAL
    expected = librosa.util.frame(padded, frame_length=400, hop_length=160).T
    frames = frame(jnp.asarray(SIGNAL), 400, 160, center, pad_mode)
    np.testing.assert_array_equal(frames, expected)
    assert frames.shape[0] == int(num_frames(SIGNAL.size, 400, 160, center))


def test_num_frames_counts_like_librosa_and_is_zero_for_short_uncentred_input():
    lengths = jnp.array([0, 399, 400, 8000])
    np.testing.assert_array_equal(num_frames(lengths, 400, 160, center=True), [1, 3, 3, 51])
    np.testing.assert_array_equal(num_frames(lengths, 400, 160, center=False), [0, 0, 1, 48])


@pytest.mark.parametrize("name", ["hann", "hamming"])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("dft", ["fft", "matmul"])  # matmul: the DFT matrix that ONNX export uses
def test_power_spectrogram_matches_librosa_stft(name, center, dft):
    # win_length < n_fft also checks that the window is zero-padded to the centre of n_fft.
    kwargs = dict(n_fft=512, hop_length=160, win_length=400, window=name, center=center)
    expected = np.abs(librosa.stft(REFERENCE, **kwargs)) ** 2
    actual = power_spectrogram(jnp.asarray(SIGNAL), **kwargs, dft=dft)
    assert actual.shape == expected.T.shape
    assert _relative_error(actual, expected.T) < 1e-5


def test_matmul_stft_equals_librosa_complex_stft():
    expected = librosa.stft(REFERENCE, n_fft=400, hop_length=160)
    actual = np.asarray(stft(jnp.asarray(SIGNAL), 400, 160, dft="matmul"))
    assert _relative_error(actual, expected.T) < 1e-5


def test_power_spectrogram_reflect_padding_matches_librosa():
    expected = np.abs(librosa.stft(REFERENCE, n_fft=400, hop_length=160, pad_mode="reflect")) ** 2
    actual = power_spectrogram(jnp.asarray(SIGNAL), 400, 160, pad_mode="reflect")
    assert _relative_error(actual, expected.T) < 1e-5


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
def test_mel_filterbank_matches_librosa(htk, norm):
    settings = dict(sr=SAMPLE_RATE, n_fft=400, n_mels=80, fmin=20.0, fmax=7600.0, htk=htk)
    expected = librosa.filters.mel(norm=norm, **settings)
    actual = mel_filterbank(SAMPLE_RATE, 400, 80, 20.0, 7600.0, htk=htk, norm=norm)
    assert actual.dtype == np.float32
    assert _relative_error(actual, expected) < 1e-6


def test_log_mel_matches_log_of_librosa_melspectrogram():
    expected = librosa.feature.melspectrogram(
        y=REFERENCE, sr=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80
    )
    mel = mel_spectrogram(jnp.asarray(SIGNAL), SAMPLE_RATE, 400, 160, n_mels=80)
    assert _relative_error(mel, expected.T) < 1e-5
    log_mel = log_mel_spectrogram(mel, scale="natural", eps=1e-6)
    np.testing.assert_allclose(log_mel, np.log(expected.T + 1e-6), atol=1e-3)


def test_mfcc_matches_librosa_feature_mfcc():
    expected = librosa.feature.mfcc(
        y=REFERENCE, sr=SAMPLE_RATE, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40
    )
    mel = mel_spectrogram(jnp.asarray(SIGNAL), SAMPLE_RATE, 400, 160, n_mels=40)
    actual = mfcc(log_mel_spectrogram(mel, scale="db", top_db=80.0), n_mfcc=13)
    np.testing.assert_allclose(actual, expected.T, atol=1e-3)


def test_preemphasis_matches_librosa_with_zero_initial_state():
    expected = librosa.effects.preemphasis(REFERENCE, coef=0.97, zi=0.0)
    actual = preemphasis(jnp.asarray(SIGNAL), 0.97)
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    # librosa's default initial state only changes the first sample.
    default = librosa.effects.preemphasis(REFERENCE, coef=0.97)
    np.testing.assert_allclose(actual[1:], default[1:], atol=1e-6)


LIBROSA_MFCC = FrontEndConfig(
    n_mels=40, preemphasis=None, feature="mfcc", log_scale="db", normalize="none"
)


def test_compute_features_reproduces_librosa_mfcc_on_a_padded_batch():
    lengths = np.array([5000, 8000])
    garbage = 10.0 * np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    batch = np.stack([np.concatenate([SIGNAL[:5000], garbage]), SIGNAL])
    features, frame_lengths = compute_features(
        LIBROSA_MFCC, jnp.asarray(batch), jnp.asarray(lengths)
    )
    assert features.shape == (2, 51, 13) and features.dtype == jnp.float32
    np.testing.assert_array_equal(frame_lengths, [32, 51])
    for row, length in enumerate(lengths):
        expected = librosa.feature.mfcc(
            y=REFERENCE[:length], sr=SAMPLE_RATE, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40
        ).T
        np.testing.assert_allclose(features[row, : len(expected)], expected, atol=1e-3)
        assert not np.any(features[row, len(expected) :])


@pytest.mark.parametrize(
    "config",
    [
        FrontEndConfig(),
        FrontEndConfig(feature="mfcc", pad_mode="reflect", window="hamming"),
        FrontEndConfig(center=False, log_scale="db"),
    ],
    ids=["log_mel", "mfcc_reflect_hamming", "uncentred_db"],
)
def test_padding_does_not_change_valid_features(config):
    length = 5000
    alone, alone_lengths = compute_features(
        config, jnp.asarray(SIGNAL[None, :length]), jnp.array([length])
    )
    for padding in (np.zeros(3000), 10.0 * np.random.default_rng(2).standard_normal(3000)):
        padded = np.concatenate([SIGNAL[:length], padding.astype(np.float32)])[None]
        features, lengths = compute_features(config, jnp.asarray(padded), jnp.array([length]))
        assert int(lengths[0]) == int(alone_lengths[0])
        valid = int(lengths[0])
        np.testing.assert_allclose(features[0, :valid], alone[0, :valid], atol=1e-4)
        assert not np.any(features[0, valid:])
        assert features.shape[-1] == config.feature_dim


def test_utterance_normalisation_ignores_padded_frames():
    rng = np.random.default_rng(3)
    features = rng.normal(3.0, 2.0, size=(2, 20, 4)).astype(np.float32)
    features[0, 12:] = 1e6  # padding garbage must not leak into the statistics
    lengths = np.array([12, 20])
    normalized = normalize_features(jnp.asarray(features), jnp.asarray(lengths), eps=0.0)
    for row, length in enumerate(lengths):
        valid = features[row, :length]
        expected = (valid - valid.mean(0)) / valid.std(0)
        np.testing.assert_allclose(normalized[row, :length], expected, atol=1e-5)
    assert not np.any(normalized[0, 12:])


def test_global_normalisation_uses_given_statistics_and_zeros_padding():
    features = jnp.full((1, 5, 2), 4.0)
    normalized = normalize_features(
        features,
        jnp.array([3]),
        mode="global",
        mean=jnp.array([1.0, 2.0]),
        std=jnp.array([3.0, 1.0]),
    )
    np.testing.assert_allclose(normalized[0, :3], [[1.0, 2.0]] * 3)
    assert not np.any(normalized[0, 3:])
    with pytest.raises(ValueError, match="needs both mean and std"):
        normalize_features(features, jnp.array([3]), mode="global")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(window="blackman"), "unknown window"),
        (dict(feature="fbank"), "unknown feature"),
        (dict(pad_mode="edge"), "unknown pad_mode"),
        (dict(normalize="global"), "unknown normalize"),
        (dict(log_scale="log10"), "unknown log_scale"),
        (dict(n_fft=256), "win_length <= n_fft"),
        (dict(hop_length=0), "hop_length must be positive"),
        (dict(fmax=9000.0), "fmin < fmax"),
        (dict(n_mfcc=81), "n_mfcc <= n_mels"),
        (dict(preemphasis=1.5), "preemphasis"),
    ],
)
def test_bad_config_raises_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FrontEndConfig(), **changes)


def test_functional_api_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown window"):
        window("kaiser", 16)
    with pytest.raises(ValueError, match="only dct_type=2"):
        mfcc(jnp.zeros((3, 8)), n_mfcc=4, dct_type=3)
    with pytest.raises(ValueError, match="win_length must be"):
        power_spectrogram(jnp.zeros(800), 256, 128, win_length=300)


def test_front_end_and_spec_augment_run_inside_an_outer_jit():
    config = FrontEndConfig(n_mels=20)
    audio, lengths = jnp.asarray(np.stack([SIGNAL, SIGNAL])), jnp.array([8000, 3000])

    @jax.jit
    def step(key, audio, lengths):
        features, frame_lengths = compute_features(config, audio, lengths)
        return spec_augment(key, features, frame_lengths, freq_width=5, time_width=10)

    expected = spec_augment(
        jax.random.key(0), *compute_features(config, audio, lengths), freq_width=5, time_width=10
    )
    np.testing.assert_allclose(step(jax.random.key(0), audio, lengths), expected, atol=1e-5)
