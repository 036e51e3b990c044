"""Drift monitoring: reference statistics saved at export (``reference``), PSI / KS / MMD²
(``statistics``), windowed reports and plots (``report``, ``jaxdl drift``) and the server's rolling
window behind its ``/metrics`` drift gauges (``server``)."""

from jaxdl.monitoring.reference import (
    DriftReference,
    compute_reference,
    embedding_function,
    experiment_reference,
    feature_plan,
    input_features,
    workdir_reference,
)
from jaxdl.monitoring.report import compare_window, drift_report, plot_report
from jaxdl.monitoring.server import DriftMonitor
from jaxdl.monitoring.statistics import categorical_psi, ks_test, mmd2, mmd_test, psi

__all__ = [
    "DriftMonitor",
    "DriftReference",
    "categorical_psi",
    "compare_window",
    "compute_reference",
    "drift_report",
    "embedding_function",
    "experiment_reference",
    "feature_plan",
    "input_features",
    "ks_test",
    "mmd2",
    "mmd_test",
    "plot_report",
    "psi",
    "workdir_reference",
]
