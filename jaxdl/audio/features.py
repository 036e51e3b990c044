"""Speech front end in jax.numpy: framing, STFT, mel filterbank, log-mel, MFCC, normalisation.

Every transform is a pure, jit-able function of static-shape arrays, so it runs on device inside
the train step. Waveforms are [..., N] (one utterance or a batch); spectral features are
time-major [..., frames, bins], the transpose of librosa's [bins, frames]. Passing `lengths`
(valid samples per waveform) makes the waveform transforms padding-aware: samples past a length
are never read and frames past `num_frames(lengths, ...)` come out as zeros, so a padded batch
gives each waveform the features it would get alone. The waveform transforms and
`compute_features` are jitted with their settings static: fast when called eagerly, inlined when
called inside a larger jit.

With the same settings the results equal librosa 0.11 (`librosa.stft`, `librosa.filters.mel`,
`librosa.feature.melspectrogram`, `librosa.feature.mfcc`) up to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl.layers.conv import portable_ops_active

WINDOWS = ("hann", "hamming")
PAD_MODES = ("constant", "reflect")
LOG_SCALES = ("natural", "db")
FEATURES = ("log_mel", "mfcc")
NORMALIZATIONS = ("utterance", "none")

_HIGHEST = jax.lax.Precision.HIGHEST  # keep the constant projections float32-exact on TPU/GPU


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")


def preemphasis(waveform: jax.Array, coef: float = 0.97) -> jax.Array:
    """y[0] = x[0], y[t] = x[t] - coef * x[t-1] on the last axis: boosts high frequencies.

    Equals `librosa.effects.preemphasis(x, coef=coef, zi=0.0)`. librosa's default `zi`
    extrapolates x[-1] and gives y[0] = 3 x[0] - x[1]; only that first sample differs. The filter
    is causal, so padding after a waveform never changes its valid samples.
    """
    previous = jnp.concatenate([jnp.zeros_like(waveform[..., :1]), waveform[..., :-1]], axis=-1)
    return waveform - coef * previous


def _frame_count(num_samples, n_fft: int, hop_length: int, center: bool):
    """Frame count with operators that work on Python ints (static shapes) and int arrays.
    Arrays divide with truncating ``lax.div`` on non-negative values (floor division there):
    ``//`` lowers with ``rem``, which ONNX conversion with a symbolic batch cannot take."""
    div = (lambda a, b: a // b) if isinstance(num_samples, (int, np.integer)) else lax.div
    if center:
        return 1 + div(num_samples, hop_length)
    excess = num_samples - n_fft
    return (num_samples >= n_fft) * (1 + div(excess * (excess >= 0), hop_length))


def num_frames(
    num_samples: jax.Array | int, n_fft: int, hop_length: int, center: bool = True
) -> jax.Array:
    """Frames (int32) that `frame`/`stft` give for `num_samples` valid samples, as librosa counts.

    centre: 1 + N // hop (librosa pads n_fft // 2 on both sides); otherwise 1 + (N - n_fft) // hop,
    or 0 when N < n_fft.
    """
    return _frame_count(jnp.asarray(num_samples, jnp.int32), n_fft, hop_length, center)


def _gather_frames(
    samples: jax.Array, length: jax.Array, counted: jax.Array, index: np.ndarray, pad_mode: str
) -> jax.Array:
    """Frames of one waveform [N] as if it were `length` samples long; see `frame`."""
    index = jnp.asarray(index)
    if pad_mode == "reflect":
        index = jnp.abs(index)
        index = jnp.where(index >= length, 2 * (length - 1) - index, index)
    inside = (index >= 0) & (index < length)
    frames = jnp.where(inside, samples[jnp.clip(index, 0, samples.shape[0] - 1)], 0)
    valid = jnp.arange(index.shape[0]) < counted
    return jnp.where(valid[:, None], frames, 0).astype(samples.dtype)


@functools.partial(jax.jit, static_argnames=("frame_length", "hop_length", "center", "pad_mode"))
def frame(
    waveform: jax.Array,
    frame_length: int,
    hop_length: int,
    center: bool = True,
    pad_mode: str = "constant",
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Slices [..., N] into overlapping frames [..., T, frame_length], T from `num_frames(N)`.

    With `center`, frame t is centred on sample t * hop and the signal is padded by
    frame_length // 2 on both sides, with zeros ('constant', librosa 0.11's default) or a
    mirror image without repeating the edge ('reflect', `np.pad` reflect). `lengths` [...] gives
    each waveform's valid samples: padding starts there instead of at N (past one reflection,
    for lengths <= frame_length // 2, it is zeros), and frames past `num_frames(lengths)` are
    zeros.
    """
    _check_choice(pad_mode, PAD_MODES, "pad_mode")
    total = waveform.shape[-1]
    count = _frame_count(total, frame_length, hop_length, center)
    offset = frame_length // 2 if center else 0
    index = np.arange(count)[:, None] * hop_length + np.arange(frame_length)[None, :] - offset
    batch_shape = waveform.shape[:-1]
    lengths = jnp.broadcast_to(jnp.asarray(total if lengths is None else lengths), batch_shape)
    lengths = lengths.astype(jnp.int32).reshape(-1)
    counted = num_frames(lengths, frame_length, hop_length, center)
    gather = functools.partial(_gather_frames, index=index, pad_mode=pad_mode)
    frames = jax.vmap(gather)(waveform.reshape(-1, total), lengths, counted)
    return frames.reshape(*batch_shape, count, frame_length)


def _window_np(name: str, length: int) -> np.ndarray:
    _check_choice(name, WINDOWS, "window")
    alpha = 0.5 if name == "hann" else 0.54
    return alpha - (1.0 - alpha) * np.cos(2.0 * np.pi * np.arange(length) / length)


def window(name: str, length: int) -> jax.Array:
    """Periodic 'hann' or 'hamming' window [length], as `scipy.signal.get_window(name, length)`."""
    return jnp.asarray(_window_np(name, length), jnp.float32)


_STFT_STATIC = ("n_fft", "hop_length", "win_length", "window", "center", "pad_mode", "dft")
# How the STFT computes its DFT: 'fft' (jnp.fft.rfft), or 'matmul' with the DFT matrix, for graphs
# leaving JAX (ONNX: jax2onnx 0.17.1's rfft yields a DFT node onnxruntime rejects).
DFT_METHODS = ("fft", "matmul")


def _rfft_parts(frames: jax.Array, n_fft: int, dft: str) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of ``rfft(frames, n=n_fft)`` over the last axis (length n_fft)."""
    _check_choice(dft, DFT_METHODS, "dft")
    if dft == "fft":
        spectrum = jnp.fft.rfft(frames, n=n_fft, axis=-1)
        return spectrum.real, spectrum.imag
    angles = 2.0 * np.pi * np.outer(np.arange(n_fft), np.arange(n_fft // 2 + 1)) / n_fft
    cos, sin = (jnp.asarray(f(angles), frames.dtype) for f in (np.cos, np.sin))
    real = jnp.matmul(frames, cos, precision=_HIGHEST)
    return real, -jnp.matmul(frames, sin, precision=_HIGHEST)


def _stft_parts(
    waveform: jax.Array,
    n_fft: int,
    hop_length: int,
    win_length: int | None,
    window: str,
    center: bool,
    pad_mode: str,
    lengths: jax.Array | None,
    dft: str,
) -> tuple[jax.Array, jax.Array]:
    """Real and imaginary parts of the STFT; see `stft`."""
    win_length = n_fft if win_length is None else win_length
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in (0, n_fft={n_fft}], got {win_length}")
    left = (n_fft - win_length) // 2
    taper = np.zeros(n_fft)
    taper[left : left + win_length] = _window_np(window, win_length)
    frames = frame(waveform, n_fft, hop_length, center, pad_mode, lengths)
    return _rfft_parts(frames * jnp.asarray(taper, frames.dtype), n_fft, dft)


@functools.partial(jax.jit, static_argnames=_STFT_STATIC)
def stft(
    waveform: jax.Array,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "constant",
    lengths: jax.Array | None = None,
    dft: str = "fft",
) -> jax.Array:
    """Complex STFT [..., T, n_fft // 2 + 1]: `librosa.stft(...).T` for the same arguments.

    A window shorter than n_fft is zero-padded on both sides to n_fft, as librosa does;
    `lengths` (valid samples) is passed to `frame`; `dft` is one of `DFT_METHODS`.
    """
    real, imag = _stft_parts(
        waveform, n_fft, hop_length, win_length, window, center, pad_mode, lengths, dft
    )
    return jax.lax.complex(real, imag)


@functools.partial(jax.jit, static_argnames=_STFT_STATIC)
def power_spectrogram(
    waveform: jax.Array,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "constant",
    lengths: jax.Array | None = None,
    dft: str = "fft",
) -> jax.Array:
    """|STFT|^2 [..., T, n_fft // 2 + 1]; arguments as `stft` (no complex numbers on the way)."""
    real, imag = _stft_parts(
        waveform, n_fft, hop_length, win_length, window, center, pad_mode, lengths, dft
    )
    return jnp.square(real) + jnp.square(imag)


def _hz_to_mel(hz: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] float32, equal to `librosa.filters.mel`.

    A numpy constant (built at trace time). `htk` picks the HTK mel scale instead of Slaney's;
    norm='slaney' scales each triangle to unit area in Hz, None leaves peaks at 1.
    """
    if norm not in ("slaney", None):
        raise ValueError(f"unknown mel norm {norm!r}; expected 'slaney' or None")
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bin_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_edges = np.linspace(
        _hz_to_mel(np.asarray(fmin, float), htk),
        _hz_to_mel(np.asarray(fmax, float), htk),
        n_mels + 2,
    )
    edges_hz = _mel_to_hz(mel_edges, htk)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - bin_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= 2.0 / (edges_hz[2:] - edges_hz[:-2])[:, None]
    return weights.astype(np.float32)


@functools.partial(
    jax.jit,
    static_argnames=_STFT_STATIC + ("sample_rate", "n_mels", "fmin", "fmax", "htk", "norm"),
)
def mel_spectrogram(
    waveform: jax.Array,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "constant",
    n_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
    lengths: jax.Array | None = None,
    dft: str = "fft",
) -> jax.Array:
    """Power mel spectrogram [..., T, n_mels]: `librosa.feature.melspectrogram(...).T` (power=2)."""
    power = power_spectrogram(
        waveform, n_fft, hop_length, win_length, window, center, pad_mode, lengths, dft
    )
    filters = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm)
    return jnp.matmul(power, jnp.asarray(filters.T), precision=_HIGHEST)


def _valid_frames(features: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Boolean [..., T, 1]: frame t of each utterance is within its `lengths` (all when None)."""
    steps = jnp.arange(features.shape[-2])
    if lengths is None:
        return jnp.ones(features.shape[:-1] + (1,), bool)
    return (steps < jnp.asarray(lengths)[..., None])[..., None]


def power_to_db(
    spectrogram: jax.Array,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """10 * log10(max(amin, S)), floored at each utterance's peak minus `top_db`.

    `librosa.power_to_db(S, ref=1.0, amin, top_db)` for one utterance [T, F]. For a batch the
    peak is taken per utterance over its valid frames (`lengths`), never over padding or over
    the other utterances as librosa's whole-array max would.
    """
    decibels = 10.0 * jnp.log10(jnp.maximum(amin, spectrogram))
    if top_db is None:
        return decibels
    valid = _valid_frames(decibels, lengths)
    peak = jnp.max(jnp.where(valid, decibels, -jnp.inf), axis=(-2, -1), keepdims=True)
    return jnp.maximum(decibels, peak - top_db)


def log_mel_spectrogram(
    mel: jax.Array,
    scale: str = "natural",
    eps: float = 1e-6,
    top_db: float | None = 80.0,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Log-compresses a power mel spectrogram [..., T, n_mels].

    scale='natural': log(mel + eps), the usual ASR input (the floor keeps silence finite);
    scale='db': `power_to_db(mel, top_db=top_db, lengths=lengths)`, librosa's MFCC input.
    """
    _check_choice(scale, LOG_SCALES, "log scale")
    if scale == "natural":
        return jnp.log(mel + eps)
    return power_to_db(mel, top_db=top_db, lengths=lengths)


def _dct_matrix(size: int, norm: str | None) -> np.ndarray:
    """DCT-II basis [size, size] with `scipy.fft.dct(x, type=2, norm=norm) == basis @ x`."""
    n = np.arange(size)
    basis = 2.0 * np.cos(np.pi * n[:, None] * (2 * n[None, :] + 1) / (2 * size))
    if norm == "ortho":
        basis[0] *= np.sqrt(1.0 / (4 * size))
        basis[1:] *= np.sqrt(1.0 / (2 * size))
    return basis


def mfcc(
    log_mel: jax.Array, n_mfcc: int = 13, dct_type: int = 2, norm: str | None = "ortho"
) -> jax.Array:
    """First `n_mfcc` DCT coefficients [..., T, n_mfcc] of a log-mel spectrogram [..., T, n_mels].

    Equals `librosa.feature.mfcc(S=log_mel.T, n_mfcc=n_mfcc, dct_type=2, norm=norm).T`; with
    log_mel = log_mel_spectrogram(mel, scale='db') (top_db=80) it equals
    `librosa.feature.mfcc(y=..., n_mfcc=n_mfcc)` on the same mel settings. Only DCT-II.
    """
    if dct_type != 2:
        raise ValueError(f"only dct_type=2 is supported, got {dct_type}")
    if norm not in ("ortho", None):
        raise ValueError(f"unknown DCT norm {norm!r}; expected 'ortho' or None")
    n_mels = log_mel.shape[-1]
    if not 0 < n_mfcc <= n_mels:
        raise ValueError(f"n_mfcc must be in (0, n_mels={n_mels}], got {n_mfcc}")
    basis = jnp.asarray(_dct_matrix(n_mels, norm)[:n_mfcc].T, jnp.float32)
    return jnp.matmul(log_mel, basis, precision=_HIGHEST)


def normalize_features(
    features: jax.Array,
    lengths: jax.Array,
    mode: str = "utterance",
    mean: jax.Array | None = None,
    std: jax.Array | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """Mean/variance-normalises [..., T, F] per feature over valid frames; padded frames -> 0.

    mode='utterance': statistics of each utterance's first `lengths` frames (CMVN), so padding
    never changes the valid outputs; divides by sqrt(var + eps). mode='global': (x - mean) / std
    with given dataset statistics [F].
    """
    _check_choice(mode, ("utterance", "global"), "normalisation mode")
    valid = _valid_frames(features, lengths)
    if mode == "global":
        if mean is None or std is None:
            raise ValueError("mode='global' needs both mean and std")
        return jnp.where(valid, (features - mean) / std, 0.0)
    count = jnp.maximum(jnp.sum(valid, axis=-2, keepdims=True), 1)
    average = jnp.sum(jnp.where(valid, features, 0.0), axis=-2, keepdims=True) / count
    centred = jnp.where(valid, features - average, 0.0)
    variance = jnp.sum(jnp.square(centred), axis=-2, keepdims=True) / count
    return centred / jnp.sqrt(variance + eps)


@dataclasses.dataclass(frozen=True)
class FrontEndConfig:
    """Settings of `compute_features`; defaults are 16 kHz, 25 ms windows, 10 ms hop, 80 log-mels.

    `log_scale` applies to both features ('db' with top_db=80 reproduces `librosa.feature.mfcc`);
    `preemphasis` None skips it; normalize='utterance' is per-utterance CMVN over valid frames.
    Frozen and hashable: `compute_features` compiles once per config.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None
    preemphasis: float | None = 0.97
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    feature: str = "log_mel"
    n_mfcc: int = 13
    log_scale: str = "natural"
    log_eps: float = 1e-6
    top_db: float | None = 80.0
    normalize: str = "utterance"

    def __post_init__(self) -> None:
        _check_choice(self.window, WINDOWS, "window")
        _check_choice(self.pad_mode, PAD_MODES, "pad_mode")
        _check_choice(self.feature, FEATURES, "feature")
        _check_choice(self.log_scale, LOG_SCALES, "log_scale")
        _check_choice(self.normalize, NORMALIZATIONS, "normalize")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        checks = [
            (self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}"),
            (self.hop_length > 0, f"hop_length must be positive, got {self.hop_length}"),
            (
                0 < self.win_length <= self.n_fft,
                f"need 0 < win_length <= n_fft, got {self.win_length} and {self.n_fft}",
            ),
            (self.n_mels > 0, f"n_mels must be positive, got {self.n_mels}"),
            (
                0 <= self.fmin < fmax <= nyquist,
                f"need 0 <= fmin < fmax <= {nyquist}, got fmin={self.fmin} fmax={fmax}",
            ),
            (
                0 < self.n_mfcc <= self.n_mels,
                f"need 0 < n_mfcc <= n_mels, got {self.n_mfcc} and {self.n_mels}",
            ),
            (
                self.preemphasis is None or 0.0 <= self.preemphasis < 1.0,
                f"preemphasis must be None or in [0, 1), got {self.preemphasis}",
            ),
            (self.log_eps > 0, f"log_eps must be positive, got {self.log_eps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def feature_dim(self) -> int:
        """F, the size of the last axis of `compute_features`' output."""
        return self.n_mfcc if self.feature == "mfcc" else self.n_mels


@functools.partial(jax.jit, static_argnames=("config",))
def compute_features(
    config: FrontEndConfig, audio: jax.Array, audio_lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Waveforms [B, N] with valid lengths [B] -> features [B, T, F] float32, frames [B] int32.

    Pre-emphasis, power STFT, mel, log (and DCT for MFCC), then per-utterance normalisation,
    all padding-aware: each row gives the features of its first `audio_lengths` samples alone,
    and frames past its length are zeros and excluded from the statistics.
    """
    audio = jnp.asarray(audio, jnp.float32)
    lengths = jnp.asarray(audio_lengths, jnp.int32)
    if config.preemphasis is not None:
        audio = preemphasis(audio, config.preemphasis)
    mel = mel_spectrogram(
        audio,
        config.sample_rate,
        config.n_fft,
        config.hop_length,
        config.win_length,
        config.window,
        config.center,
        config.pad_mode,
        config.n_mels,
        config.fmin,
        config.fmax,
        lengths=lengths,
        dft="matmul" if portable_ops_active() else "fft",
    )
    frame_lengths = num_frames(lengths, config.n_fft, config.hop_length, config.center)
    features = log_mel_spectrogram(
        mel, config.log_scale, config.log_eps, config.top_db, frame_lengths
    )
    if config.feature == "mfcc":
        features = mfcc(features, config.n_mfcc)
    if config.normalize == "utterance":
        features = normalize_features(features, frame_lengths)
    else:
        features = jnp.where(_valid_frames(features, frame_lengths), features, 0.0)
    return features.astype(jnp.float32), frame_lengths
