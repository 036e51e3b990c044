"""``jaxdl serve``: a run's best (else latest) checkpoint behind the HTTP server."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from jaxdl.export import experiment_inference, experiment_metadata
from jaxdl.serving.app import create_app

# uvicorn answers 503 itself beyond this many open connections + tasks (memory stays bounded).
DEFAULT_LIMIT_CONCURRENCY = 1024


def experiment_app(experiment, state, workdir: str, **options: Any) -> FastAPI:
    """``create_app`` over ``state``'s model of ``experiment``; ``options`` go to it."""
    inference = experiment_inference(experiment, state)
    return create_app(inference, experiment_metadata(experiment, state, workdir), **options)


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
