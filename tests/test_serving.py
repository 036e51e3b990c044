"""The model server (``jaxdl.serving``): predictions equal the in-process ones at any batch size and
under concurrency, concurrent requests are merged into one model call, no request compiles, every
client mistake gets a 4xx with a one-line message, and the health, metadata and metrics
endpoints."""

import json
import threading

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jaxdl.export import InferenceFunction, inference_function
from jaxdl.models import get_model
from jaxdl.serving import MicroBatcher, Overloaded, bucket_sizes, create_app
from jaxdl.tasks.base import Field
from jaxdl.tasks.classification import ImageClassification
from tests.helpers import TINY_OVERRIDES

CLASS_NAMES = ["zero", "one", "two", "three", "four"]
MAX_BATCH = 8
SHAPE = (8, 8, 1)


def _random_variables(model, shape, seed: int = 0):
    """Variables of ``model``'s structure (``model.init`` traced, not compiled: seconds saved),
    drawn with numpy: kernels N(0, 1/fan_in), biases and means N(0, 0.1), scales and variances
    near 1."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if leaf.ndim >= 2:
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "scale" in name or "var" in name:
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:
            value = rng.normal(scale=0.1, size=leaf.shape)
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, flax.linen.meta.unbox(abstract))


@pytest.fixture(scope="module")
def classifier() -> InferenceFunction:
    """A randomly initialised ResNet-8 of width 8 on 8x8x1 images, 5 classes."""
    task = ImageClassification(input_shape=SHAPE, num_classes=5)
    model = get_model("resnet", depth=8, width=8, stem="cifar", num_classes=5)
    return inference_function(task, model, _random_variables(model, (1, *SHAPE)))


@pytest.fixture(scope="module")
def app(classifier):
    meta = {"task": "image_classification", "model": "resnet", "class_names": CLASS_NAMES}
    return create_app(classifier, meta, max_batch=MAX_BATCH, max_wait_ms=2.0)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *SHAPE)).astype(np.float32)


def _metrics(client) -> dict[str, list]:
    """``/metrics`` parsed: family name -> samples."""
    text = client.get("/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _sample(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def _assert_matches(response: dict, expected: dict) -> None:
    """Served outputs equal the in-process ones (float32 goes through JSON exactly; the bound
    allows for XLA picking other kernels for the padded batch size on other CPUs)."""
    for name, want in expected.items():
        got = np.asarray(response["outputs"][name], dtype=want.dtype)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    ids = np.argmax(expected["logits"], axis=-1)
    assert response["predictions"] == ids.tolist()
    assert response["predicted_classes"] == [CLASS_NAMES[i] for i in ids]


def test_served_predictions_equal_in_process_ones_and_no_request_compiles(client, app, classifier):
    sizes = (1, 3, 5, MAX_BATCH)
    responses = {}
    for size in sizes:
        reply = client.post("/predict", json={"inputs": {"inputs": _images(size, size).tolist()}})
        assert reply.status_code == 200, reply.text
        responses[size] = reply.json()
    # Every bucket was compiled at start-up; sizes 3 and 5 ran padded, compiling nothing.
    assert app.state.batcher.buckets == bucket_sizes(MAX_BATCH) == (1, 2, 4, 8)
    assert app.state.batcher.compiled_sizes() == len(app.state.batcher.buckets)
    for size in sizes:
        _assert_matches(responses[size], classifier({"inputs": _images(size, size)}))
    predicted = {c for r in responses.values() for c in r["predictions"]}
    assert len(predicted) > 1  # the comparison covers more than one class


def test_concurrent_requests_are_merged_and_each_gets_its_own_results(classifier):
    app = create_app(classifier, {"class_names": CLASS_NAMES}, max_batch=MAX_BATCH, max_wait_ms=300)
    sizes = (1, 2, 3, 1, 2, 1, 4, 1)
    inputs = [_images(size, 100 + i) for i, size in enumerate(sizes)]
    replies: list = [None] * len(sizes)
    with TestClient(app) as client:
        start = threading.Barrier(len(sizes))

        def send(index: int) -> None:
            start.wait()
            body = {"inputs": {"inputs": inputs[index].tolist()}}
            replies[index] = client.post("/predict", json=body)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sizes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        metrics = _metrics(client)
    for reply, images in zip(replies, inputs, strict=True):
        assert reply.status_code == 200, reply.text
        _assert_matches(reply.json(), classifier({"inputs": images}))
    calls = metrics["jaxdl_serving_requests_per_call"]
    assert _sample(calls, "jaxdl_serving_requests_per_call_sum") == len(sizes)
    assert _sample(calls, "jaxdl_serving_requests_per_call_count") < len(sizes)  # merged
    examples = metrics["jaxdl_serving_batch_size"]
    assert _sample(examples, "jaxdl_serving_batch_size_sum") == sum(sizes)
    assert _sample(examples, "jaxdl_serving_batch_size_bucket", le="1.0") < len(sizes)


def test_the_batcher_merges_queued_requests_in_order_and_splits_the_results(classifier):
    calls = []
    batcher = MicroBatcher(
        classifier, max_batch=MAX_BATCH, max_wait_ms=0, observer=lambda *a: calls.append(a[:3])
    )
    sizes = (1, 2, 3, 4, 8)
    inputs = [_images(size, 200 + i) for i, size in enumerate(sizes)]
    futures = [batcher.submit([x]) for x in inputs]  # queued before the worker starts
    batcher.start()
    results = [future.result(timeout=30) for future in futures]
    batcher.close()
    # 1+2+3 fit in 8 (padded to 8); 4 does not fit beside them and runs next, then the full 8.
    assert calls == [(6, 8, 3), (4, 4, 1), (8, 8, 1)]
    for result, images in zip(results, inputs, strict=True):
        want = classifier({"inputs": images})
        assert set(result) == {"logits", "probabilities"}
        np.testing.assert_allclose(result["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 to 8 examples"):
        batcher.submit([_images(9, 0)])


def test_a_full_queue_is_overload(classifier, app, client, monkeypatch):
    batcher = MicroBatcher(classifier, max_batch=MAX_BATCH, max_queue=1)
    batcher.submit([_images(1, 0)])
    with pytest.raises(Overloaded):
        batcher.submit([_images(1, 0)])

    def overloaded(_):
        raise Overloaded("256 requests already queued")

    monkeypatch.setattr(app.state.batcher, "submit", overloaded)
    reply = client.post("/predict", json={"inputs": {"inputs": _images(1, 0).tolist()}})
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.json() == {"error": "server overloaded: 256 requests already queued; retry later"}


def _body(value) -> bytes:
    return json.dumps(value).encode()


def _image_body(images) -> bytes:
    return _body({"inputs": {"inputs": images}})


def _with_value(value: float) -> bytes:
    images = _images(2, 0).astype(np.float64)
    images[1, 3, 4, 0] = value
    return _image_body(images.tolist())  # json.dumps writes NaN and Infinity literals


ONE = _images(1, 0).tolist()
BAD_REQUESTS = {
    "not json": (b"{'inputs': ", 400, "not valid JSON"),
    "empty body": (b"", 400, "empty body"),
    "bad utf-8": (b'{"inputs": "\xff"}', 400, "not valid JSON"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    "not an object": (_body([1, 2]), 400, "must be a JSON object"),
    "unknown key": (_body({"inputs": {}, "instances": []}), 400, "unknown key(s) ['instances']"),
    "missing inputs key": (_body({}), 400, "missing key 'inputs'"),
    "inputs not an object": (_body({"inputs": [1]}), 400, "'inputs' must be an object"),
    "missing input": (_body({"inputs": {}}), 422, "missing input 'inputs'"),
    "extra input": (
        _body({"inputs": {"inputs": ONE, "mask": [1]}}),
        422,
        "unknown input(s) ['mask']",
    ),
    "wrong shape": (_image_body([[[0.0] * 8] * 8]), 422, "shape [1, 8, 8], the model takes"),
    "scalar": (_image_body(0.5), 422, "shape [], the model takes [batch, 8, 8, 1]"),
    "strings": (_image_body([[[["a"]] * 8] * 8]), 422, "must hold float32 values"),
    "null": (_image_body([[[[None]] * 8] * 8]), 422, "must hold float32 values"),
    "ragged": (_image_body([ONE[0], ONE[0][:4]]), 422, "not a rectangular array"),
    "nan": (_with_value(float("nan")), 422, "'inputs' holds NaN or infinite values"),
    "infinity": (_with_value(float("-inf")), 422, "'inputs' holds NaN or infinite values"),
    "beyond float32": (_with_value(1e39), 422, "too large for float32"),
    "empty batch": (_image_body([]), 422, "'inputs' is an empty batch"),
    "too many examples": (
        _image_body(_images(9, 0).tolist()),
        413,
        "9 examples exceed the server's max_batch of 8",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_with_a_one_line_message(client, case):
    body, status, message = BAD_REQUESTS[case]
    reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(reply.json()) == {"error"} and "\n" not in error
    assert message in error, error


def test_an_oversized_body_is_refused_before_it_is_read(classifier):
    app = create_app(classifier, max_batch=MAX_BATCH, max_body_bytes=4096)
    body = _image_body(_images(4, 0).tolist())
    assert len(body) > 4096
    with TestClient(app) as client:
        reply = client.post("/predict", content=body)  # with Content-Length
        assert reply.status_code == 413
        assert reply.json() == {"error": f"body of {len(body)} bytes exceeds the 4096-byte limit"}
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        reply = client.post("/predict", content=chunks)  # chunked: no Content-Length
        assert reply.status_code == 413
        assert reply.json() == {"error": "body exceeds the 4096-byte limit"}
        assert client.post("/predict", content=_image_body(ONE)).status_code == 200
        errors = _metrics(client)["jaxdl_serving_errors"]
    assert _sample(errors, "jaxdl_serving_errors_total", reason="too_large") == 2


def test_wrong_methods_and_paths_get_a_json_error(client):
    reply = client.get("/predict")
    assert reply.status_code == 405 and reply.json() == {"error": "Method Not Allowed"}
    reply = client.get("/nowhere")
    assert reply.status_code == 404 and reply.json() == {"error": "Not Found"}


def _speech_like() -> InferenceFunction:
    """Two inputs, float audio and int32 lengths, with the CTC task's output names: checks the
    multi-input path without compiling a speech model."""
    spec = {"audio": Field(np.float32, (16,)), "audio_length": Field(np.int32)}

    def fn(audio, lengths):
        log_probs = jax.nn.log_softmax(audio.reshape(-1, 4, 4), axis=-1)
        return log_probs, (lengths + 3) // 4

    return InferenceFunction(fn, spec, ("log_probs", "lengths"), None, None, None)


def test_a_model_with_several_inputs(tmp_path):
    inference = _speech_like()
    app = create_app(inference, {"task": "ctc"}, max_batch=4)
    audio = _images(3, 1).reshape(3, -1)[:, :16]
    lengths = [16, 9, 1]
    with TestClient(app) as client:
        reply = client.post(
            "/predict", json={"inputs": {"audio": audio.tolist(), "audio_length": lengths}}
        )
        assert reply.status_code == 200, reply.text
        want = inference({"audio": audio, "audio_length": np.asarray(lengths, np.int32)})
        assert set(reply.json()) == {"outputs"}  # no class predictions for CTC outputs
        got = reply.json()["outputs"]
        np.testing.assert_allclose(np.asarray(got["log_probs"]), want["log_probs"], rtol=1e-6)
        assert got["lengths"] == [4, 3, 1]
        cases = {
            "floats for int": ([16.0, 9.5, 1.0], 422, "must hold int32 values, got float64"),
            "out of range": ([16, 9, 2**31], 422, "outside the int32 range"),
            "other batch": ([16, 9], 422, "'audio_length' has batch 2, other inputs 3"),
            "missing": (None, 422, "missing input 'audio_length'"),
        }
        for name, (value, status, message) in cases.items():
            inputs = {"audio": audio.tolist()}
            if value is not None:
                inputs["audio_length"] = value
            reply = client.post("/predict", json={"inputs": inputs})
            assert reply.status_code == status, (name, reply.text)
            assert message in reply.json()["error"], (name, reply.text)


def test_health_metadata_and_metrics(classifier, client):
    assert client.get("/healthz").json() == {"status": "ok", "queued": 0}
    meta = client.get("/metadata").json()
    assert meta["class_names"] == CLASS_NAMES and meta["model"] == "resnet"
    assert meta["inputs"] == {"inputs": {"shape": ["batch", 8, 8, 1], "dtype": "float32"}}
    assert meta["outputs"] == ["logits", "probabilities"]
    assert meta["serving"]["buckets"] == [1, 2, 4, 8] and meta["serving"]["max_batch"] == 8
    assert {"jax", "jaxlib", "flax", "fastapi"} <= set(meta["versions"])

    client.post("/predict", json={"inputs": {"inputs": ONE}})
    client.post("/predict", content=b"nope")
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    metrics = _metrics(client)
    requests = metrics["jaxdl_serving_requests"]
    assert _sample(requests, "jaxdl_serving_requests_total", endpoint="/predict", status="200") >= 1
    assert _sample(requests, "jaxdl_serving_requests_total", endpoint="/predict", status="400") >= 1
    assert _sample(requests, "jaxdl_serving_requests_total", endpoint="/healthz") == 1
    latency = metrics["jaxdl_serving_request_latency_seconds"]
    assert _sample(latency, "jaxdl_serving_request_latency_seconds_count", endpoint="/predict") >= 2
    assert _sample(metrics["jaxdl_serving_errors"], "jaxdl_serving_errors_total") >= 1
    assert _sample(metrics["jaxdl_serving_batch_size"], "jaxdl_serving_batch_size_count") >= 1
    assert "jaxdl_serving_model_call_seconds" in metrics

    client.app.state.batcher.close()
    try:
        reply = client.get("/healthz")
        assert reply.status_code == 503 and reply.json() == {
            "error": "the model worker is not running"
        }
    finally:
        client.app.state.batcher.start()


def test_a_failing_model_call_is_a_500_with_its_reason(classifier, monkeypatch):
    app = create_app(classifier, max_batch=MAX_BATCH)

    def broken(*_):
        raise RuntimeError("device lost\nsecond line")

    monkeypatch.setattr(app.state.batcher, "_fn", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.post("/predict", json={"inputs": {"inputs": ONE}})
        assert reply.status_code == 500
        assert reply.json() == {"error": "internal error: RuntimeError: device lost"}
        assert client.get("/healthz").status_code == 200  # the worker survives
        errors = _metrics(client)["jaxdl_serving_errors"]
    assert _sample(errors, "jaxdl_serving_errors_total", reason="internal") == 1


@pytest.mark.slow
def test_app_from_workdir_serves_the_best_checkpoint(tmp_path):
    from jaxdl.cli import main
    from jaxdl.serving import app_from_workdir

    workdir = str(tmp_path / "run")
    config = "experiments/digits_resnet.py:depth=8,epochs=1"
    overrides = [*TINY_OVERRIDES, "--config.schedule.warmup_epochs=0.0"]
    assert main(["train", "--config", config, "--workdir", workdir, *overrides]) == 0
    app = app_from_workdir(workdir, max_batch=4)
    with TestClient(app) as client:
        meta = client.get("/metadata").json()
        assert meta["task"] == "image_classification" and meta["checkpoint_step"] > 0
        assert meta["class_names"] and len(meta["class_names"]) == 10
        shape = meta["inputs"]["inputs"]["shape"][1:]
        images = np.random.default_rng(0).uniform(size=(3, *shape)).astype(np.float32)
        reply = client.post("/predict", json={"inputs": {"inputs": images.tolist()}})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["predicted_classes"]) == 3
