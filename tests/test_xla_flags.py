"""jaxdl.xla_flags: the XLA flags the jaxdl command sets before jax starts."""

import os
import subprocess
import sys

import pytest

from jaxdl.xla_flags import CPU_DEFAULTS, OPT_OUT_ENV, apply_default_xla_flags, default_xla_flags

FLAG = "xla_cpu_experimental_ynn_fusion_type"


def test_defaults_go_only_to_checked_jaxlib_releases():
    assert default_xla_flags("0.10.2") == [f"--{FLAG}={CPU_DEFAULTS[FLAG]}"]
    assert default_xla_flags("0.13.0") == []  # XLA would abort on a flag it lost
    assert default_xla_flags("") == []


@pytest.mark.parametrize(
    ("environ", "added", "flags"),
    [
        ({}, True, f"--{FLAG}=-individual_convolution"),
        (
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
            True,
            f"--xla_force_host_platform_device_count=8 --{FLAG}=-individual_convolution",
        ),
        ({"XLA_FLAGS": f"--{FLAG}=dot"}, False, f"--{FLAG}=dot"),  # the user's value wins
        ({OPT_OUT_ENV: "0"}, False, None),
        ({OPT_OUT_ENV: "off", "XLA_FLAGS": "--a=1"}, False, "--a=1"),
    ],
)
def test_apply_appends_what_the_environment_does_not_set(environ, added, flags):
    got = apply_default_xla_flags(environ, jaxlib_version="0.10.2")
    assert bool(got) == added
    assert environ.get("XLA_FLAGS") == flags
    assert apply_default_xla_flags(environ, jaxlib_version="0.10.2") == []  # idempotent


def test_the_installed_jaxlib_accepts_the_defaults():
    """XLA aborts on an unknown flag: a fresh process with the defaults must start a backend."""
    flags = default_xla_flags()
    if not flags:
        pytest.skip("no defaults for the installed jaxlib")
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    probe = subprocess.run(
        [sys.executable, "-c", "import jax, jax.numpy as jnp; print(jnp.ones(3).sum())"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-500:]
    assert probe.stdout.strip() == "3.0"


def test_the_jaxdl_command_applies_them_first(monkeypatch):
    from jaxdl import cli

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ.get("XLA_FLAGS", "") == " ".join(default_xla_flags())
