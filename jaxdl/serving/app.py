"""The model server as a FastAPI app, independent of workdirs (``create_app``).

Endpoints:

* ``POST /predict``: ``{"inputs": {name: batch}}`` (see ``jaxdl.serving.validation``) →
  ``{"outputs": {name: lists}}``, plus ``predictions`` / ``predicted_classes`` for classifiers.
  Requests are merged by ``MicroBatcher``; one holding more than ``max_batch`` examples is refused
  with 413 (the client splits it). Given ``uploads`` (``jaxdl.serving.uploads``), it also takes
  image files, text or audio files, by their ``Content-Type``; any other type is a 415.
* ``GET /healthz``: 200 ``{"status": "ok"}`` while the model worker runs, else 503.
* ``GET /metadata``: the metadata given, the input spec and outputs, serving options, versions.
* ``GET /metrics``: Prometheus text (``ServingMetrics``).

Every refused request gets a 4xx and ``{"error": "<one line>"}``; a full queue is 503 (overload,
retry later); anything else that fails is a bug: 500 with its one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from jaxdl.export.artifact import input_spec_json, package_versions
from jaxdl.export.inference import InferenceFunction
from jaxdl.monitoring.reference import DriftReference
from jaxdl.monitoring.server import DEFAULT_EVERY, DEFAULT_WINDOW, server_monitor
from jaxdl.serving.batcher import MicroBatcher, Overloaded, bucket_sizes
from jaxdl.serving.metrics import ServingMetrics
from jaxdl.serving.responses import predict_response
from jaxdl.serving.uploads import Uploads, decode_request
from jaxdl.serving.validation import RequestError

DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_MAX_QUEUE = 256
VERSIONED_PACKAGES = ("jaxdl", "jax", "jaxlib", "flax", "numpy", "fastapi", "uvicorn")
# The errors metric's reason for each refusal status (422 and others: "bad_input").
REFUSALS = {400: "bad_request", 413: "too_large", 415: "unsupported_media_type"}
logger = logging.getLogger(__name__)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes: from its
    Content-Length before reading anything, else while streaming it."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise RequestError(413, f"body of {int(length)} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    inference: InferenceFunction,
    metadata: Mapping[str, Any] | None = None,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batching: bool = True,
    uploads: Uploads | None = None,
    drift_reference: DriftReference | None = None,
    drift_window: int = DEFAULT_WINDOW,
    drift_every: int = DEFAULT_EVERY,
) -> FastAPI:
    """A FastAPI app serving ``inference``; every bucket size is compiled before it returns.

    ``metadata``: what ``/metadata`` reports besides the spec (task, model, class names,
    checkpoint step, ...); its ``class_names`` label classifier predictions. ``max_batch``: most
    examples per model call and per request; ``max_wait_ms``: how long a call waits for more
    requests to merge; ``max_queue``: requests waiting before 503; ``batching=False`` runs each
    request alone (the benchmark's baseline); ``uploads``: the files or text the model takes
    besides JSON arrays (``experiment_uploads``), None for JSON only; ``drift_reference``: the
    statistics behind the drift gauges, over the last ``drift_window`` examples every
    ``drift_every`` requests (``jaxdl.monitoring.server``; 0 or no reference: no gauges).
    """
    metadata = dict(metadata or {})
    spec = input_spec_json(inference)
    if "inputs" in metadata and metadata["inputs"] != spec:
        raise ValueError(f"metadata inputs {metadata['inputs']} differ from the model's {spec}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    metrics = ServingMetrics(bucket_sizes(max_batch))
    batcher = MicroBatcher(
        inference,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        batching=batching,
        observer=metrics.observe_batch,
    )
    class_names = metadata.get("class_names")
    described = {
        **metadata,
        "inputs": spec,
        "outputs": list(inference.output_names),
        "serving": {
            "max_batch": batcher.max_batch,
            "buckets": list(batcher.buckets),
            "max_wait_ms": max_wait_ms,
            "batching": batching,
            "max_body_bytes": max_body_bytes,
            "max_queue": max_queue,
            "compile_seconds": round(batcher.compile_seconds, 3),
        },
        "versions": package_versions(VERSIONED_PACKAGES),
        "uploads": uploads.describe() if uploads is not None else None,
    }

    def respond(outputs: Mapping[str, Any], notes: Mapping[str, Any]) -> dict[str, Any]:
        extra = uploads.respond(outputs) if uploads is not None else {}
        return {**predict_response(outputs, class_names), **notes, **extra}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="jaxdl model server", lifespan=lifespan, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.drift = server_monitor(
        drift_reference, inference.input_names, metrics.add_drift_gauges, window=drift_window,
        every=drift_every,
    )  # fmt: skip
    batcher.start()  # also serves without the lifespan (e.g. a TestClient outside ``with``)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("internal error while serving a request")
        metrics.errors.labels("internal").inc()
        reason = (str(error).splitlines() or [""])[0][:200]
        return _error(500, f"internal error: {type(error).__name__}: {reason}")

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            body = await _read_body(request, max_body_bytes)
            content_type = request.headers.get("content-type")
            decoded = await run_in_threadpool(
                decode_request, body, content_type, spec, batcher.max_batch, uploads
            )
            future = batcher.submit([decoded.inputs[name] for name in inference.input_names])
        except RequestError as error:
            reason = REFUSALS.get(error.status, "bad_input")
            metrics.errors.labels(reason).inc()
            return _error(error.status, error.message)
        except Overloaded as error:
            metrics.errors.labels("overloaded").inc()
            return _error(503, f"server overloaded: {error}; retry later", {"Retry-After": "1"})
        metrics.queue_depth.set(batcher.queued)
        outputs = await asyncio.wrap_future(future)
        if app.state.drift is not None:
            app.state.drift.observe(decoded.inputs, outputs)
        content = await run_in_threadpool(respond, outputs, decoded.notes)
        return JSONResponse(content)

    @app.get("/healthz")
    async def healthz() -> Response:
        if not batcher.running:
            return _error(503, "the model worker is not running")
        return JSONResponse({"status": "ok", "queued": batcher.queued})

    @app.get("/metadata")
    async def get_metadata() -> Response:
        return JSONResponse(described)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        metrics.queue_depth.set(batcher.queued)
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(_Counted, metrics=metrics)
    return app


class _Counted:
    """``ServingMetrics.middleware`` in the ``add_middleware`` form (outermost: counts every
    response, the error handlers' included)."""

    def __init__(self, app, metrics: ServingMetrics):
        self._app = metrics.middleware(app)

    async def __call__(self, scope, receive, send):
        await self._app(scope, receive, send)
