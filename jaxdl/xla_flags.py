"""XLA flags jaxdl sets by default, before jax starts a backend (XLA reads ``$XLA_FLAGS`` then).

The ``jaxdl`` command applies them first thing; code that imports jaxdl's layers into its own
program can call ``apply_default_xla_flags()`` before its first jax computation. A flag the user
already sets in ``$XLA_FLAGS`` keeps the user's value; ``JAXDL_DEFAULT_XLA_FLAGS=0`` turns the
defaults off.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import MutableMapping

OPT_OUT_ENV = "JAXDL_DEFAULT_XLA_FLAGS"

# XLA:CPU hands every convolution and matmul to YNNPACK. Its 3x3 convolution at 64 channels
# runs at about half the speed of XLA's own (benchmarks/README.md, "The remaining gap, traced"):
# taking convolutions out of YNNPACK made ResNet-18's CPU train step 1.7x faster on a 2-core AVX2
# EPYC (issue 13). Its matmuls at the Conformer's and the LM's shapes ([1600 x 144] x [144 x 576]
# and their gradients) are slower than Eigen's on a 2-core AVX-512 Xeon: 1.55-1.89 ms per GEMM
# against 1.17-1.50 (torch: 1.17-1.22), and taking them out too made the Conformer's train step
# 7-10% faster and the LM's 3-10% in interleaved A/Bs of one process (benchmarks/README.md,
# 2026-11-28), with MobileNetV3 and EfficientNet unchanged. '-' removes one type from the default
# list; YNNPACK keeps its reductions, which the mobile models need (off: MobileNetV3-small's step
# 78 -> 296 ms). Setting the list to 'dot' instead, as an earlier session tried, also moves
# element-wise fusions and loses what the convolutions gain.
CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-individual_dot"}

# XLA aborts the whole process on a flag it does not know, so the defaults go only to the
# jaxlib releases they were checked with.
VERIFIED_JAXLIB_PREFIXES = ("0.10.",)


def _jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def default_xla_flags(jaxlib_version: str | None = None) -> list[str]:
    """jaxdl's default flags as ``--name=value`` for ``jaxlib_version`` (the installed one by
    default); none for a jaxlib they were not checked with."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if not version or not version.startswith(VERIFIED_JAXLIB_PREFIXES):
        return []
    return [f"--{name}={value}" for name, value in CPU_DEFAULTS.items()]


def apply_default_xla_flags(
    environ: MutableMapping[str, str] | None = None, jaxlib_version: str | None = None
) -> list[str]:
    """Appends to ``$XLA_FLAGS`` each default flag it does not already set; returns the flags
    added. Takes effect only if no jax backend has started yet in this process."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    current = environ.get("XLA_FLAGS", "")
    already = set(re.findall(r"--([A-Za-z0-9_]+)", current))
    added = [
        flag
        for flag in default_xla_flags(jaxlib_version)
        if flag[2:].split("=", 1)[0] not in already
    ]
    if added:
        environ["XLA_FLAGS"] = " ".join(filter(None, [current.strip(), *added]))
    return added
