"""Speech front end on device: log-mel features, alone and after the CTC task's waveform
augmentation, next to PyTorch's STFT + mel matmul in the same run.

What ``experiments/speech_conformer.py`` computes inside every train step before the encoder:
``jaxdl.audio.perturb_waveforms`` (speed perturbation 0.9-1.1x and white noise at 10-30 dB SNR on
30 % of the utterances) then ``jaxdl.audio.compute_features`` (pre-emphasis, 400-sample Hann
frames every 160 samples, power STFT, 80 log-mels, per-utterance normalisation), jitted, on a
padded batch whose valid lengths vary. Rows:

- ``jaxdl features``: ``compute_features`` alone;
- ``jaxdl augment + features``: ``perturb_waveforms`` then ``compute_features`` (with the room a
  0.9x slowdown needs, as the task pads);
- ``torch features`` (peer, fresh process, one thread per core): ``torch.stft`` (Hann, centred,
  zero padding) + the same mel matrix + log, every row at full length (no padding awareness).

    python benchmarks/speech_front_end.py             # CPU: B=32 x 2.17 s at 16 kHz
    python benchmarks/speech_front_end.py --full      # GPU: B=256 x 16 s
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SAMPLE_RATE = 16000
SPEED_FACTORS = (0.9, 1.1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="padded length per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-peer", action="store_true", help="skip the torch row")
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_dir:
        parser.error("--profile-dir traces train steps; this benchmark times no train step")
    args.batch_size = args.batch_size or (256 if args.full else 32)
    args.seconds = args.seconds or (16.0 if args.full else 2.17)
    return args


def make_batch(batch_size: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeded noise-like waveforms [B, N] whose valid lengths run from 60 % to 100 % of N."""
    rng = np.random.default_rng(0)
    size = int(seconds * SAMPLE_RATE)
    audio = (0.1 * rng.standard_normal((batch_size, size))).astype(np.float32)
    lengths = rng.integers(int(0.6 * size), size + 1, batch_size).astype(np.int32)
    audio[np.arange(size)[None, :] >= lengths[:, None]] = 0.0
    return audio, lengths


def jaxdl_rows(args: argparse.Namespace) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from jaxdl.audio import FrontEndConfig, compute_features, perturb_waveforms

    front_end = FrontEndConfig(n_mels=80)  # the peer uses the same settings
    audio, lengths = make_batch(args.batch_size, args.seconds)
    room = int(np.ceil(audio.shape[1] / min(SPEED_FACTORS))) - audio.shape[1]
    audio, lengths = jnp.asarray(np.pad(audio, ((0, 0), (0, room)))), jnp.asarray(lengths)

    @jax.jit
    def features(audio, lengths):
        return compute_features(front_end, audio, lengths)

    @jax.jit
    def augmented(key, audio, lengths):
        audio, lengths = perturb_waveforms(
            key, audio, lengths, speed_factors=SPEED_FACTORS, noise_prob=0.3, snr_db=(10.0, 30.0)
        )
        return compute_features(front_end, audio, lengths)

    keys = iter(jax.random.split(jax.random.key(0), args.warmup + args.steps))
    runs = {
        "jaxdl features": lambda: jax.block_until_ready(features(audio, lengths)),
        "jaxdl augment + features": lambda: jax.block_until_ready(
            augmented(next(keys), audio, lengths)
        ),
    }
    return [
        {"row": name, **common.time_steps(run, args.warmup, args.steps)}
        for name, run in runs.items()
    ]


def torch_worker(spec: dict) -> dict:
    """The peer row: torch.stft + mel matmul + log on the same batch, full length per row, with
    the settings of jaxdl's default ``FrontEndConfig`` (80 mels)."""
    import torch

    from jaxdl.audio import FrontEndConfig
    from jaxdl.audio.features import mel_filterbank

    config = FrontEndConfig(n_mels=80)
    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)
    audio, _ = make_batch(spec["batch_size"], spec["seconds"])
    audio = torch.from_numpy(audio)
    filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels)
    mel = torch.from_numpy(np.asarray(filters, np.float32))
    window = torch.hann_window(config.win_length)

    def run() -> None:
        previous = audio[:, :-1] * config.preemphasis
        emphasised = torch.cat([audio[:, :1], audio[:, 1:] - previous], dim=1)
        options = {"window": window, "pad_mode": "constant", "return_complex": True}
        spectrum = torch.stft(emphasised, config.n_fft, config.hop_length, **options)
        power = spectrum.real.square() + spectrum.imag.square()
        torch.log(torch.matmul(mel, power) + config.log_eps)

    timing = common.time_steps(run, spec["warmup"], spec["steps"])
    timing.pop("step_seconds")
    return {"row": f"torch {torch.__version__} features", **timing}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.torch_worker:
        print(json.dumps(torch_worker(json.loads(args.torch_worker))))
        return
    common.apply_xla_flags(args.xla_flags)
    rows = jaxdl_rows(args)
    if not args.no_peer:
        spec = {
            "threads": os.cpu_count() or 1,
            "batch_size": args.batch_size,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "steps": args.steps,
        }
        rows.append(common.run_torch_worker(__file__, spec))
    print(f"B={args.batch_size} x {args.seconds:g} s at {SAMPLE_RATE} Hz, 80 log-mels")
    print(common.format_table(rows, ["row", "step_ms_median", "step_ms_min"]))
    for row in rows:
        row.pop("step_seconds", None)
    path = common.write_report("speech_front_end", {"args": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    common.run_program(main)
