"""Test-wide setup: 8 fake CPU devices so sharding strategies run on any machine, and the XLA
flags the ``jaxdl`` command sets (``jaxdl.xla_flags``), so in-process tests run what it runs.

Must run before jax is imported anywhere, which pytest guarantees for the rootdir conftest.
"""

import os

from jaxdl.xla_flags import apply_default_xla_flags

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
apply_default_xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

# Identical programs (the same step compiled by several trainers, or by the CLI subprocesses that
# inherit this environment) compile once per test session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdl-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


def pytest_configure(config) -> None:
    """The default suite (``make test``: ``-m "not slow"``) compiles at LLVM -O0, jax's own
    switch, which CLI subprocesses inherit: XLA's HLO passes run as before, only code generation
    is cheaper. It ran in 14 min 24 s instead of 21 min on 2 cores. Compiled code runs ~10%
    slower and its float results may differ in the last bits, so the long end-to-end runs of
    ``make test-slow`` keep the default level (tests/test_multihost.py sets -O0 itself, so it
    stays fast when run alone). Runs before any test module imports jax."""
    if (config.option.markexpr or "").strip() == "not slow":
        os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
