"""``jaxdl serve``: a run's best (else latest) checkpoint behind the HTTP server."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from jaxdl.errors import UserError
from jaxdl.export import experiment_inference, experiment_metadata
from jaxdl.monitoring.reference import DriftReference, workdir_reference
from jaxdl.monitoring.server import DEFAULT_EVERY
from jaxdl.serving.app import create_app
from jaxdl.serving.uploads import experiment_uploads

# uvicorn answers 503 itself beyond this many open connections + tasks (memory stays bounded).
DEFAULT_LIMIT_CONCURRENCY = 1024
logger = logging.getLogger(__name__)


def _drift_reference(experiment, inference, workdir: str, step: int) -> DriftReference | None:
    """The workdir's drift reference (cached in it, see ``workdir_reference``); None, logged,
    when it cannot be taken: the server then runs without drift gauges."""
    try:
        return workdir_reference(experiment, inference, workdir, step)
    except UserError as error:
        logger.warning("serving without drift monitoring: %s", error)
        return None


def experiment_app(experiment, state, workdir: str, **options: Any) -> FastAPI:
    """``create_app`` over ``state``'s model of ``experiment``, taking the uploads its data
    pipeline can read (``experiment_uploads``), with the drift reference of the workdir's
    training split (unless ``drift_every=0``); ``options`` go to it."""
    inference = experiment_inference(experiment, state)
    if options.get("drift_every", DEFAULT_EVERY) > 0 and "drift_reference" not in options:
        step = int(state.step)
        options["drift_reference"] = _drift_reference(experiment, inference, workdir, step)
    meta = experiment_metadata(experiment, state, workdir)
    return create_app(inference, meta, uploads=experiment_uploads(experiment, workdir), **options)


def app_from_workdir(workdir: str, **options: Any) -> FastAPI:
    """``experiment_app`` over ``workdir``'s best (else latest) checkpoint."""
    from jaxdl.cli import _restore_best_state, trained_workdir_config
    from jaxdl.experiment import build_experiment

    experiment = build_experiment(trained_workdir_config(workdir))
    state = _restore_best_state(experiment, workdir)
    return experiment_app(experiment, state, workdir, **options)


def serve_experiment(
    experiment,
    state,
    workdir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    limit_concurrency: int | None = DEFAULT_LIMIT_CONCURRENCY,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serves ``state``'s model on ``host:port`` until interrupted (uvicorn, one process);
    ``options`` go to ``create_app`` (max_batch, max_wait_ms, max_body_bytes, max_queue,
    batching)."""
    import uvicorn

    app = experiment_app(experiment, state, workdir, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=limit_concurrency)
