"""Keep XLA:CPU's per-step buffers in the process heap instead of taking fresh pages each step.

An XLA:CPU executable allocates its temporaries as one block per call (119 MB for a small
Conformer's train step). glibc serves a block that large from a fresh ``mmap`` and unmaps it on
free, so every step page-faults the whole block back in: ~45,000 faults and ~100 ms of kernel
time per step of the Conformer benchmark on 2 cores (``benchmarks/README.md``, issue 16).
PyTorch's tensors are small enough for glibc's heap, so its steps never pay this.

``retain_host_memory()`` tells glibc (``mallopt``) to serve every block from one heap and to
keep freed memory: then the block is reused from the second step on, with no faults. The cost
is that the process keeps its peak heap (up to 2 GiB of free memory at the heap's top) instead
of returning it to the OS: what a training process wants, not what every library user does, so
only the ``jaxdl`` command and the benchmarks call it. glibc's thread arenas cannot hold blocks
over 64 MB (they fall back to ``mmap`` whatever ``M_MMAP_MAX`` says), hence one arena: it must be
set before XLA starts its threads, i.e. before the first jax computation. No maintained package
does this (jemalloc or tcmalloc need ``LD_PRELOAD`` at process start).
``JAXDL_RETAIN_HOST_MEMORY=0`` turns it off; other C libraries than glibc are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

OPT_OUT_ENV = "JAXDL_RETAIN_HOST_MEMORY"

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free memory at the heap's top kept rather than returned to the OS (the largest int mallopt takes).
KEEP_FREE_BYTES = 2**31 - 1

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREE_BYTES))


def _opted_out(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def retain_host_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Sets glibc's allocator to reuse large freed blocks (see the module docstring); returns
    whether it did: False when opted out (``JAXDL_RETAIN_HOST_MEMORY=0``), off Linux/glibc, or
    when glibc refuses a setting. Call it before the first jax computation."""
    if _opted_out(os.environ if environ is None else environ):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
