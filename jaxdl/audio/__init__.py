"""Speech audio: the jax.numpy feature front end and audio augmentation."""

from jaxdl.audio.augment import add_noise, perturb_waveforms, spec_augment, speed_perturb
from jaxdl.audio.features import (
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
    power_to_db,
    preemphasis,
    stft,
    window,
)

__all__ = [
    "perturb_waveforms",
    "FrontEndConfig",
    "add_noise",
    "compute_features",
    "frame",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_spectrogram",
    "mfcc",
    "normalize_features",
    "num_frames",
    "power_spectrogram",
    "power_to_db",
    "preemphasis",
    "spec_augment",
    "speed_perturb",
    "stft",
    "window",
]
