"""Load test of the model server (issue 17): requests per second, latency and memory of
``jaxdl.serving`` with and without dynamic micro-batching, with a share of malformed requests.

The server (a randomly initialised ResNet-8 of width 8 on 8x8x1 images, 5 classes) runs with
uvicorn in a subprocess on 127.0.0.1, so the load generator does not share its interpreter. The
parent fires the requests from ``--clients`` concurrent connections (asyncio + httpx): valid ones
hold 1 to 4 examples, the malformed ones cycle through non-JSON, missing/unknown input names, a
wrong shape, strings, NaN, an empty batch, too many examples and an oversized body. Every valid
response is checked against the same model run in this process (``wrong`` counts mismatches);
every malformed one must be a 4xx.

    python benchmarks/serve_load.py              # 1,000 requests, 16 clients, 30% malformed
    python benchmarks/serve_load.py --full       # 10,000 requests
    python benchmarks/serve_load.py --requests 200 --clients 4 --max-wait-ms 2

Columns: ``2xx``/``4xx``/``5xx`` counts (``5xx`` must be 0), ``wrong`` (valid responses that
differ from the in-process model, must be 0), ``req_per_s`` and ``examples_per_s`` (valid
examples over the whole run), ``p50_ms``/``p99_ms`` (latency of the valid requests),
``model_calls`` and ``mean_batch`` (from the server's ``/metrics``), ``peak_rss_mib`` (the
server process's high-water mark, compile included).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import add_common_args, apply_xla_flags, format_table, run_program, write_report

NAME = "serve_load"
SHAPE = (8, 8, 1)
NUM_CLASSES = 5
# A small body limit so that the oversized-body requests stay cheap to send.
MAX_BODY_BYTES = 64 * 1024
MALFORMED_KINDS = (
    "not_json",
    "missing_input",
    "unknown_input",
    "wrong_shape",
    "strings",
    "nan",
    "empty_batch",
    "too_many_examples",
    "oversized_body",
)
TABLE_COLUMNS = (
    "mode",
    "requests",
    "2xx",
    "4xx",
    "5xx",
    "wrong",
    "req_per_s",
    "examples_per_s",
    "p50_ms",
    "p99_ms",
    "model_calls",
    "mean_batch",
    "peak_rss_mib",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; ``--full`` sets 10,000 requests unless ``--requests`` is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--requests", type=int, help="requests per mode (default 1000; full 10k)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--malformed", type=float, default=0.3, help="share of bad requests")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-worker", help=argparse.SUPPRESS)  # internal: the server process
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 10_000 if args.full else 1_000
    return args


def build_inference(seed: int):
    """The benchmark's model: the structure from ``model.init`` (traced only), variables drawn
    with numpy from ``seed`` (identical in the server and in this process)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdl.export import inference_function
    from jaxdl.models import get_model
    from jaxdl.tasks.classification import ImageClassification

    task = ImageClassification(input_shape=SHAPE, num_classes=NUM_CLASSES)
    model = get_model("resnet", depth=8, width=8, stem="cifar", num_classes=NUM_CLASSES)
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False)
    )

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if leaf.ndim >= 2:
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "scale" in name or "var" in name:
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            value = rng.normal(scale=0.1, size=leaf.shape)
        return value.astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract))
    return inference_function(task, model, variables)


def serve_worker(spec: dict[str, Any]) -> None:
    """The server process: builds the app (compiling every bucket) and runs uvicorn."""
    import uvicorn

    from jaxdl.serving import create_app

    app = create_app(
        build_inference(spec["seed"]),
        {"task": "image_classification", "model": "resnet"},
        max_batch=spec["max_batch"],
        max_wait_ms=spec["max_wait_ms"],
        max_body_bytes=MAX_BODY_BYTES,
        max_queue=4 * spec["clients"],
        batching=spec["batching"],
    )
    uvicorn.run(app, host="127.0.0.1", port=spec["port"], log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_requests(args: argparse.Namespace, inference) -> list[dict[str, Any]]:
    """The request mix: ``{"body": bytes, "valid": bool, "examples": n, "expected": ...}``."""
    rng = np.random.default_rng(args.seed)
    pool_sizes = rng.choice([1, 1, 1, 2, 3, 4], size=64)
    pool_images = [rng.normal(size=(n, *SHAPE)).astype(np.float32) for n in pool_sizes]
    everything = np.concatenate(pool_images)
    probabilities = inference({"inputs": everything})["probabilities"]
    valid, offset = [], 0
    for images in pool_images:
        want = probabilities[offset : offset + len(images)]
        offset += len(images)
        body = json.dumps({"inputs": {"inputs": images.tolist()}}).encode()
        valid.append({"body": body, "valid": True, "examples": len(images), "expected": want})
    one = rng.normal(size=(1, *SHAPE)).tolist()
    nan = rng.normal(size=(2, *SHAPE))
    nan[1, 0, 0, 0] = float("nan")
    bad = {
        "not_json": b"{inputs: [1, 2",
        "missing_input": json.dumps({"inputs": {}}).encode(),
        "unknown_input": json.dumps({"inputs": {"inputs": one, "mask": [1]}}).encode(),
        "wrong_shape": json.dumps({"inputs": {"inputs": [[0.0] * 8] * 2}}).encode(),
        "strings": json.dumps({"inputs": {"inputs": [[[["x"]] * 8] * 8]}}).encode(),
        "nan": json.dumps({"inputs": {"inputs": nan.tolist()}}).encode(),
        "empty_batch": json.dumps({"inputs": {"inputs": []}}).encode(),
        "too_many_examples": json.dumps(
            {"inputs": {"inputs": np.zeros((args.max_batch + 1, *SHAPE)).tolist()}}
        ).encode(),
        "oversized_body": b'{"inputs": {"inputs": [' + b"0.0, " * (MAX_BODY_BYTES // 4) + b"0]}}",
    }
    requests = []
    for index in range(args.requests):
        if rng.random() < args.malformed:
            kind = MALFORMED_KINDS[index % len(MALFORMED_KINDS)]
            requests.append({"body": bad[kind], "valid": False, "examples": 0, "kind": kind})
        else:
            requests.append(valid[rng.integers(len(valid))])
    return requests


async def fire(url: str, requests: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Sends every request from ``clients`` concurrent connections; statuses and latencies."""
    import httpx

    results: list[Any] = [None] * len(requests)
    next_index = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in next_index:
            request = requests[index]
            start = time.perf_counter()
            reply = await client.post(
                "/predict", content=request["body"], headers={"content-type": "application/json"}
            )
            seconds = time.perf_counter() - start
            wrong = False
            if request["valid"] and reply.status_code == 200:
                got = np.asarray(reply.json()["outputs"]["probabilities"], np.float32)
                want = request["expected"]
                same_class = np.array_equal(got.argmax(-1), want.argmax(-1))
                wrong = not (same_class and np.allclose(got, want, rtol=1e-4, atol=1e-6))
            elif not request["valid"]:
                wrong = not 400 <= reply.status_code < 500
            results[index] = (reply.status_code, seconds, wrong)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"results": results, "seconds": elapsed}


def _peak_rss_mib(pid: int) -> float | None:
    """The process's resident-set high-water mark (Linux ``VmHWM``)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _server_batches(url: str) -> tuple[float, float]:
    """Model calls and examples served, from the server's ``/metrics``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return values["jaxdl_serving_batch_size_count"], values["jaxdl_serving_batch_size_sum"]


def run_mode(args: argparse.Namespace, batching: bool, requests: list[dict]) -> dict[str, Any]:
    """Starts a server, loads it, stops it: one row of the table."""
    import httpx

    port = _free_port()
    spec = {
        "seed": args.seed,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "clients": args.clients,
        "batching": batching,
        "port": port,
    }
    command = [sys.executable, os.path.abspath(__file__), "--serve-worker", json.dumps(spec)]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become healthy within 300 s")
            time.sleep(0.2)
        loaded = asyncio.run(fire(url, requests, args.clients))
        calls, served = _server_batches(url)
        peak = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    statuses = np.asarray([status for status, _, _ in loaded["results"]])
    valid = np.asarray([request["valid"] for request in requests])
    latencies = np.asarray([seconds for _, seconds, _ in loaded["results"]])[valid] * 1e3
    examples = sum(request["examples"] for request in requests)
    return {
        "mode": f"micro-batching ({args.max_wait_ms:g} ms)" if batching else "one call per request",
        "requests": len(requests),
        "2xx": int(np.sum((statuses >= 200) & (statuses < 300))),
        "4xx": int(np.sum((statuses >= 400) & (statuses < 500))),
        "5xx": int(np.sum(statuses >= 500)),
        "wrong": int(sum(wrong for _, _, wrong in loaded["results"])),
        "req_per_s": len(requests) / loaded["seconds"],
        "examples_per_s": examples / loaded["seconds"],
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "model_calls": int(calls),
        "mean_batch": served / max(calls, 1.0),
        "peak_rss_mib": peak,
        "seconds": loaded["seconds"],
        "statuses": dict(collections.Counter(str(s) for s in statuses.tolist())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from jaxdl.cli import _skip_absent_tpu

    _skip_absent_tpu()  # before jax starts (here and in the servers, which inherit it)
    args = parse_args(argv)
    if args.serve_worker:
        serve_worker(json.loads(args.serve_worker))
        return 0
    apply_xla_flags(args.xla_flags)  # inherited by the server processes
    requests = make_requests(args, build_inference(args.seed))
    rows = [run_mode(args, batching, requests) for batching in (True, False)]
    print(
        f"serve_load: {args.requests} requests ({args.malformed:.0%} malformed), "
        f"{args.clients} clients, max_batch {args.max_batch}"
    )
    print(format_table(rows, TABLE_COLUMNS))
    config = {k: getattr(args, k) for k in ("requests", "clients", "malformed", "max_batch")}
    config.update(max_wait_ms=args.max_wait_ms, seed=args.seed, max_body_bytes=MAX_BODY_BYTES)
    path = write_report(NAME, {"config": config, "rows": rows}, args.out)
    print(f"wrote {path}")
    bad = [row["mode"] for row in rows if row["5xx"] or row["wrong"]]
    return 1 if bad else 0


if __name__ == "__main__":
    run_program(main)
