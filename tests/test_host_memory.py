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


def _probe(setting: str) -> dict:
    # What the jaxdl command runs: its default XLA flags, optimised code, one device.
    env = {
        key: value for key, value in os.environ.items() if key != "JAX_DISABLE_MOST_OPTIMIZATIONS"
    }
    env.update({host_memory.ENV: setting, "JAX_PLATFORMS": "cpu"})
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
