"""Hyper-parameter sweeps: W&B sweep files run locally (``jaxdl sweep``) or by ``wandb agent``."""

from jaxdl.sweeps.report import format_table, write_report
from jaxdl.sweeps.runner import metric_value, run_sweep, should_prune, validation_curve
from jaxdl.sweeps.spec import Parameter, SweepSpec, parse_sweep, read_sweep

__all__ = [
    "Parameter",
    "SweepSpec",
    "format_table",
    "metric_value",
    "parse_sweep",
    "read_sweep",
    "run_sweep",
    "should_prune",
    "validation_curve",
    "write_report",
]
