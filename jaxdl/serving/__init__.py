"""Serving: a trained model behind HTTP (``jaxdl serve``), with dynamic micro-batching.

``create_app(inference, metadata)`` builds the FastAPI app from any ``InferenceFunction``;
``serve_experiment`` runs a restored run's model with uvicorn.
"""

from jaxdl.serving.app import create_app
from jaxdl.serving.batcher import MicroBatcher, Overloaded, bucket_sizes
from jaxdl.serving.validation import RequestError, check_request
from jaxdl.serving.workdir import app_from_workdir, experiment_app, serve_experiment

__all__ = [
    "MicroBatcher",
    "Overloaded",
    "RequestError",
    "app_from_workdir",
    "bucket_sizes",
    "check_request",
    "create_app",
    "experiment_app",
    "serve_experiment",
]
