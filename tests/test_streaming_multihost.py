"""Two real JAX processes train from one streamed image folder: each reads a disjoint shard.

Launches ``tests/streaming_worker.py`` twice (2 CPU devices each, gloo collectives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import portpicker
import pytest
from PIL import Image

from jaxdl.data.loading import load_data

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for label in range(4):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{i}.png")


# make test-slow: tests/test_multihost.py trains two processes in make test.
@pytest.mark.slow
def test_two_processes_read_disjoint_shards_of_a_streamed_folder_and_train(tmp_path):
    folder = tmp_path / "folder"
    _folder(folder)
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    processes = []
    for process_id in range(2):
        log = open(tmp_path / f"worker_{process_id}.log", "w")  # noqa: SIM115 - the child keeps it
        command = [sys.executable, str(REPO / "tests" / "streaming_worker.py")]
        command += ["--process-id", str(process_id), "--port", str(port)]
        command += ["--folder", str(folder), "--workdir", str(tmp_path)]
        processes.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    logs = "\n".join((tmp_path / f"worker_{i}.log").read_text()[-3000:] for i in range(2))
    assert [p.returncode for p in processes] == [0, 0], logs

    data = load_data(
        ml_collections.ConfigDict({"name": "image_folder", "options": {"root": str(folder)}})
    )
    expected = sorted(
        float(data.train[i]["inputs"].astype(np.float64).sum()) for i in range(len(data.train))
    )
    reads = [json.loads((tmp_path / f"read_{i}.json").read_text()) for i in range(2)]
    # Disjoint halves of the train split that together are all of it (28 images, 14 each).
    assert len(reads[0]) == len(reads[1]) == len(expected) // 2
    assert not set(reads[0]) & set(reads[1])
    np.testing.assert_allclose(sorted(reads[0] + reads[1]), expected, rtol=1e-9)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == results["best_step"] and 0.0 <= results["accuracy"] <= 1.0
    # The last checkpoint holds each process's own position in its shard.
    data_dir = tmp_path / "run" / "checkpoints" / "6" / "data"
    positions = sorted(p.name for p in data_dir.glob("*.json"))
    assert positions == ["process_0-of-2.json", "process_1-of-2.json"]
