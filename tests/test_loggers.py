"""Tests for jaxdl.loggers: JSON lines, TensorBoard events, W&B offline/disabled, make_writers."""

import json
import math
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from jaxdl.loggers import JsonlWriter, MultiWriter, TensorBoardWriter, make_writers


def strict_json_loads(line: str):
    """json.loads that rejects the non-standard NaN/Infinity tokens."""

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


def read_tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] from every event file under ``logdir``.

    Reads the TFRecord framing by hand (u64 length, u32 crc, payload, u32 crc) because the
    `tensorboard` package and its event reader are not installed; the payloads are parsed with
    tensorboardX's own Event protobuf.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_jsonl_writer_appends_one_valid_json_object_per_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(str(path))
    writer.write({"step": 1, "split": "train", "loss": 0.5, "accuracy": math.nan})
    writer.write({"step": 2, "split": "val", "loss": math.inf, "note": "ok"})
    # Flushed per record: readable before close (a crash must not lose logged metrics).
    assert len(path.read_text().splitlines()) == 2
    writer.close()

    resumed = JsonlWriter(str(path))  # a resumed run keeps appending
    resumed.write({"step": 3, "split": "train", "loss": -math.inf})
    resumed.close()

    records = [strict_json_loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"step": 1, "split": "train", "loss": 0.5, "accuracy": None},
        {"step": 2, "split": "val", "loss": None, "note": "ok"},
        {"step": 3, "split": "train", "loss": None},
    ]


def test_tensorboard_writer_writes_readable_scalar_events(tmp_path):
    logdir = tmp_path / "tensorboard"
    writer = TensorBoardWriter(str(logdir))
    writer.write({"step": 10, "epoch": 1, "split": "train", "loss": 0.25, "accuracy": 0.75})
    writer.write({"step": 20, "epoch": 2, "split": "val", "loss": 0.125, "flag": True, "x": "s"})
    writer.close()

    scalars = read_tensorboard_scalars(logdir)
    assert scalars == {
        "train/loss": [(10, 0.25)],
        "train/accuracy": [(10, 0.75)],
        "val/loss": [(20, 0.125)],
    }  # step/epoch, bools and strings are not plotted


def test_make_writers_jsonl_and_tensorboard_by_default(tmp_path):
    writers = make_writers({}, str(tmp_path), {"seed": 0})
    assert isinstance(writers, MultiWriter)
    writers.write({"step": 1, "split": "train", "loss": 1.5})
    writers.close()
    assert strict_json_loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 1,
        "split": "train",
        "loss": 1.5,
    }
    assert read_tensorboard_scalars(tmp_path / "tensorboard") == {"train/loss": [(1, 1.5)]}
    assert not (tmp_path / "wandb").exists()


def test_make_writers_without_tensorboard_writes_no_events(tmp_path):
    writers = make_writers({"tensorboard": False, "wandb": {"mode": "disabled"}}, str(tmp_path), {})
    writers.write({"step": 1, "split": "train", "loss": 1.0})
    writers.close()
    assert (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "tensorboard").exists()
    assert not (tmp_path / "wandb").exists()


@pytest.fixture
def offline_wandb_env(tmp_path, monkeypatch):
    """W&B env that cannot reach the network; WANDB_MODE stays 'disabled' (from conftest or here),
    so only the config's mode can turn logging on."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_make_writers_wandb_offline_creates_an_offline_run_dir(tmp_path, offline_wandb_env):
    workdir = tmp_path / "run"
    workdir.mkdir()
    logging_config = {"tensorboard": False, "wandb": {"mode": "offline", "project": "jaxdl-test"}}
    writers = make_writers(logging_config, str(workdir), {"model": {"depth": 20}})
    writers.write({"step": 5, "split": "train", "loss": 0.5})
    writers.close()

    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((workdir / "wandb").iterdir())
    run_files = list(runs[0].glob("run-*.wandb"))
    assert run_files and run_files[0].stat().st_size > 0


def test_make_writers_wandb_disabled_creates_no_run(tmp_path, offline_wandb_env):
    workdir = tmp_path / "run"
    workdir.mkdir()
    writers = make_writers({"tensorboard": False, "wandb": {"mode": "disabled"}}, str(workdir), {})
    assert [type(writer).__name__ for writer in writers.writers] == ["JsonlWriter"]
    writers.close()
    assert not (workdir / "wandb").exists()
    assert not (tmp_path / "wandb_dir").exists()


def test_make_writers_rejects_an_invalid_wandb_mode(tmp_path):
    with pytest.raises(ValueError, match="sometimes"):
        make_writers({"tensorboard": False, "wandb": {"mode": "sometimes"}}, str(tmp_path), {})
