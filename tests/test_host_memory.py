"""jaxdl.host_memory: XLA:CPU's per-call temporaries stay in the heap instead of being faulted in
again on every call."""

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxdl import host_memory
from jaxdl.xla_flags import default_xla_flags

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted program whose temporaries (260 MB, one block per call) are larger than glibc's
# mmap threshold and thread arenas; prints the page faults of each call.
PROBE = """
import json, resource
from jaxdl.host_memory import retain_host_memory
retained = retain_host_memory()
import jax, jax.numpy as jnp

def loss(w, x):
    hidden = jax.nn.silu(x @ w)  # [8192, 2048]: 64 MB, kept for the gradient
    return jnp.sum(hidden @ w.T)

step = jax.jit(jax.grad(loss))
x, w = jnp.full((8192, 128), 1e-2), jnp.full((128, 2048), 1e-2)
temp = step.lower(w, x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(w, x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retained": retained, "faults": faults, "temp_bytes": temp}))
"""


def _probe(setting: str, **extra_env: str) -> dict:
    # What the jaxdl command runs: its default XLA flags, optimised code, one device.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", host_memory.TUNABLES_ENV)
    }
    env.update({host_memory.ENV: setting, "JAX_PLATFORMS": "cpu", **extra_env})
    env["XLA_FLAGS"] = " ".join(default_xla_flags())
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-800:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_retained_temporaries_are_not_faulted_in_again_on_every_call():
    retained, default = _probe("1"), _probe("0")
    pages = retained["temp_bytes"] / 4096
    assert retained["retained"] and not default["retained"]
    assert retained["temp_bytes"] > 64 * 2**20  # beyond glibc's mmap threshold and arena size
    # Without it, every call faults its temporaries in afresh. With it, most calls reuse the
    # heap's block; some still fault it in (the heap grows during the first calls, and with
    # jaxdl's default XLA flag about a third of later calls fault too: cause not found).
    assert min(default["faults"][2:]) > 0.5 * pages
    assert sum(retained["faults"][2:]) < 0.5 * sum(default["faults"][2:])


def test_it_is_off_unless_asked_for():
    assert host_memory.retain_host_memory({}) is False
    for value in ("0", "off", "False", ""):
        assert host_memory.retain_host_memory({host_memory.ENV: value}) is False


def test_the_jaxdl_command_applies_the_setting_first(monkeypatch):
    from jaxdl import cli

    calls = []
    monkeypatch.setattr(host_memory, "retain_host_memory", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == [True]


HUGE_PAGES_WORK = (
    host_memory.glibc_version() is not None
    and host_memory.glibc_version() >= host_memory.HUGE_PAGE_GLIBC
    and host_memory.transparent_huge_page_mode() == "madvise"
)


@pytest.mark.skipif(not HUGE_PAGES_WORK, reason="needs glibc 2.35+ and the kernel's THP on madvise")
def test_huge_pages_cut_the_faults_of_each_call():
    huge = _probe("0", GLIBC_TUNABLES=host_memory.HUGE_PAGE_TUNABLE)
    default = _probe("0")
    pages = default["temp_bytes"] / 4096
    assert min(default["faults"][2:]) > 0.5 * pages
    # 2 MB pages: ~1/512 of the faults for the block (measured: 1-3% of the 4 KB count).
    assert sum(huge["faults"][2:]) < 0.1 * sum(default["faults"][2:])


@pytest.mark.parametrize(
    ("environ", "glibc", "thp", "tunables"),
    [
        ({}, (2, 36), "madvise", "glibc.malloc.hugetlb=1"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
            (2, 35),
            "madvise",
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
        ),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # user's choice
        ({}, (2, 34), "madvise", None),  # glibc would ignore it
        ({}, None, "madvise", None),  # not glibc
        ({}, (2, 36), "always", None),  # huge pages anyway
        ({}, (2, 36), "never", None),  # refused anyway
        ({}, (2, 36), None, None),
        ({"JAXDL_HUGE_PAGES": "0"}, (2, 36), "madvise", None),
    ],
)
def test_the_restart_environment_adds_the_tunable_only_where_it_helps(
    environ, glibc, thp, tunables
):
    got = host_memory.huge_page_environment(environ, glibc=glibc, thp_mode=thp)
    if tunables is None:
        assert got is None
    else:
        assert got == {**environ, "GLIBC_TUNABLES": tunables}


def test_the_thp_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_page_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert host_memory.transparent_huge_page_mode(str(path)) == "always"
    assert host_memory.transparent_huge_page_mode(str(tmp_path / "missing")) is None


def test_restart_execs_the_same_program_with_the_tunable(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host_memory, "transparent_huge_page_mode", lambda: "madvise")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(host_memory.HUGE_PAGES_ENV, raising=False)

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise OSError("exec refused")  # the restart then returns and the program goes on

    monkeypatch.setattr(host_memory.os, "execve", execve)
    host_memory.restart_with_huge_pages()
    assert len(calls) == 1
    path, argv, env = calls[0]
    assert path == sys.executable and argv == sys.orig_argv
    assert env["GLIBC_TUNABLES"] == host_memory.HUGE_PAGE_TUNABLE
    monkeypatch.setenv(host_memory.HUGE_PAGES_ENV, "0")
    host_memory.restart_with_huge_pages()
    assert len(calls) == 1


@pytest.mark.skipif(not HUGE_PAGES_WORK, reason="needs glibc 2.35+ and the kernel's THP on madvise")
def test_a_restarted_program_runs_again_with_the_tunable_once():
    code = (
        "import os; from jaxdl.host_memory import restart_with_huge_pages; "
        "print('start', flush=True); restart_with_huge_pages(); "
        "print(os.environ['GLIBC_TUNABLES'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDL_HUGE_PAGES")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["start", "start", host_memory.HUGE_PAGE_TUNABLE]


def test_the_jaxdl_program_restarts_before_anything_else(monkeypatch):
    from jaxdl import cli

    calls = []

    def restart():
        calls.append("restart")
        raise SystemExit(0)  # stands in for the exec: nothing after it may run

    monkeypatch.setattr(host_memory, "restart_with_huge_pages", restart)
    monkeypatch.setattr(cli, "main", lambda: calls.append("main"))
    with pytest.raises(SystemExit):
        cli.console_main()
    assert calls == ["restart"]
