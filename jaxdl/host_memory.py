"""Keep XLA:CPU's per-step buffers in the process heap instead of taking fresh pages each step.

An XLA:CPU executable allocates its temporaries as one block per call (119 MB for a small
Conformer's train step). glibc serves a block that large from a fresh ``mmap`` and unmaps it on
free, so every step page-faults the whole block back in: ~45,000 faults and ~100 ms of kernel
time per step of the Conformer benchmark on 2 cores (``benchmarks/README.md``, issue 16).
PyTorch's tensors are small enough for glibc's heap, so its steps never pay this.

``retain_host_memory()`` tells glibc (``mallopt``) to serve every block from one heap and to
keep freed memory: then the block is reused from the second step on, with no faults. glibc's
thread arenas cannot hold blocks over 64 MB (they fall back to ``mmap`` whatever ``M_MMAP_MAX``
says), hence one arena for the whole process, and that has a price: threads that allocate often
(the input pipeline's) then wait on one lock. The digits ResNet (``make train``) trained in
65.5-71.1 s with it against 50.9-67.3 s without (4 runs each, alternated), so it is opt-in:
``JAXDL_RETAIN_HOST_MEMORY=1`` before the ``jaxdl`` command (which, like the benchmarks, calls
this first thing, before jax starts its threads). Worth it when a step's temporaries pass 64 MB
(the Conformer and LM benchmarks). The process then keeps its peak heap (up to 2 GiB of free
memory at the heap's top) instead of returning it to the OS. No maintained package does this
(jemalloc or tcmalloc need ``LD_PRELOAD`` at process start). Other C libraries than glibc are
left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

ENV = "JAXDL_RETAIN_HOST_MEMORY"

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free memory at the heap's top kept rather than returned to the OS (the largest int mallopt takes).
KEEP_FREE_BYTES = 2**31 - 1

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREE_BYTES))


def _opted_in(environ: Mapping[str, str]) -> bool:
    return environ.get(ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def retain_host_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Sets glibc's allocator to reuse large freed blocks (see the module docstring) when
    ``JAXDL_RETAIN_HOST_MEMORY=1``; returns whether it did: False when not asked for, off
    Linux/glibc, or when glibc refuses a setting. Call it before the first jax computation."""
    if not _opted_in(os.environ if environ is None else environ):
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
