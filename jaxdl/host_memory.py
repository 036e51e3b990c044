"""Keep XLA:CPU's per-step buffers from costing a page fault per 4 KB on every step.

An XLA:CPU executable allocates its temporaries as one block per call (119 MB for a small
Conformer's train step). glibc serves a block that large from a fresh ``mmap`` and unmaps it on
free, so every step page-faults the whole block back in: ~35,000 faults and ~100 ms of kernel
time per step of the Conformer benchmark on 2 cores (``benchmarks/README.md``, issue 16).
PyTorch's tensors are small enough for glibc's heap, so its steps never pay this. Two remedies:

- **Transparent huge pages, on by default for the ``jaxdl`` command.** glibc (2.35+) asks the
  kernel for 2 MB pages for what it maps when ``GLIBC_TUNABLES`` holds ``glibc.malloc.hugetlb=1``:
  the block then costs ~60 faults instead of ~30,000. glibc reads the variable only at process
  start, so ``restart_with_huge_pages()`` re-executes the program with it set: the ``jaxdl``
  command and the benchmarks call it first thing. It does nothing where it would change nothing:
  off Linux or glibc, glibc before 2.35, or the kernel's THP mode not 'madvise' ('always' gives
  huge pages anyway, 'never' refuses them). ``JAXDL_HUGE_PAGES=0`` turns it off. A program of
  your own sets ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python.
- **One heap, opt-in** (``JAXDL_RETAIN_HOST_MEMORY=1``, ``retain_host_memory()``), for kernels
  without THP. glibc (``mallopt``) serves every block from one heap and keeps freed memory, so
  the block is reused from the second step on. glibc's thread arenas cannot hold blocks over
  64 MB (they fall back to ``mmap`` whatever ``M_MMAP_MAX`` says), hence one arena for the whole
  process, and that has a price: threads that allocate often (the input pipeline's) then wait on
  one lock. The digits ResNet (``make train``) trained in 65.5-71.1 s with it against
  50.9-67.3 s without (4 runs each, alternated). The process keeps its peak heap (up to 2 GiB of
  free memory at the heap's top) instead of returning it to the OS.

No maintained package does either (jemalloc or tcmalloc need ``LD_PRELOAD`` at process start).
Other C libraries than glibc are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

ENV = "JAXDL_RETAIN_HOST_MEMORY"
HUGE_PAGES_ENV = "JAXDL_HUGE_PAGES"
TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# glibc.malloc.hugetlb appeared in glibc 2.35; older releases ignore it.
HUGE_PAGE_GLIBC = (2, 35)

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
    if glibc_version() is None:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)


def glibc_version() -> tuple[int, int] | None:
    """The running glibc's (major, minor), or None off Linux/glibc."""
    if platform.system() != "Linux":
        return None
    name, version = platform.libc_ver()
    if name != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode ('always', 'madvise' or 'never': the bracketed word of ``path``), or
    None where the file is missing or unreadable."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_page_environment(
    environ: Mapping[str, str],
    *,
    glibc: tuple[int, int] | None,
    thp_mode: str | None,
) -> dict[str, str] | None:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, or None when the
    program needs no restart: turned off (``JAXDL_HUGE_PAGES=0``), already set, glibc older than
    2.35 (or none), or a THP mode other than 'madvise'."""
    if environ.get(HUGE_PAGES_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if glibc is None or glibc < HUGE_PAGE_GLIBC or thp_mode != "madvise":
        return None
    tunables = environ.get(TUNABLES_ENV, "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    updated = dict(environ)
    updated[TUNABLES_ENV] = ":".join(filter(None, [tunables, HUGE_PAGE_TUNABLE]))
    return updated


def restart_with_huge_pages() -> None:
    """Re-executes the running program (same interpreter, same arguments, same process id) with
    ``huge_page_environment``'s variables, when that returns any; returns normally otherwise or
    when the exec fails. Call it first thing, before any work that a restart would repeat."""
    environ = huge_page_environment(
        os.environ, glibc=glibc_version(), thp_mode=transparent_huge_page_mode()
    )
    if environ is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError:
        return
