"""jaxdl.xla_flags: the XLA flags the jaxdl command sets before jax starts."""

import json
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
        ({}, True, f"--{FLAG}=-individual_convolution,-individual_dot"),
        (
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
            True,
            f"--xla_force_host_platform_device_count=8 --{FLAG}=-individual_convolution,"
            "-individual_dot",
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


# Prints, for a matmul, a convolution and a reduction compiled under $XLA_FLAGS, whether each
# went to YNNPACK.
YNN_PROBE = """
import json, jax, jax.numpy as jnp
nhwc = ("NHWC", "HWIO", "NHWC")
programs = {  # a feed-forward's matmul, a ResNet 3x3 convolution, a layer norm's sum
    "dot": (lambda x, w: x @ w, (jnp.ones((1600, 144)), jnp.ones((144, 576)))),
    "conv": (
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=nhwc),
        (jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64))),
    ),
    "reduce": (lambda y: y.sum(axis=-1), (jnp.ones((1600, 144)),)),
}
print(json.dumps({
    name: "ynn_fusion" in jax.jit(f).lower(*args).compile().as_text()
    for name, (f, args) in programs.items()
}))
"""


def test_the_defaults_keep_only_reductions_on_ynnpack():
    flags = default_xla_flags()
    if not flags:
        pytest.skip("no defaults for the installed jaxlib")
    on_ynn = {}
    for setting in (" ".join(flags), ""):
        env = {**os.environ, "XLA_FLAGS": setting, "JAX_PLATFORMS": "cpu"}
        probe = subprocess.run(
            [sys.executable, "-c", YNN_PROBE], env=env, capture_output=True, text=True, check=False
        )
        assert probe.returncode == 0, probe.stderr[-500:]
        on_ynn[setting] = json.loads(probe.stdout.strip().splitlines()[-1])
    assert on_ynn[""] == {"dot": True, "conv": True, "reduce": True}  # XLA's own defaults
    assert on_ynn[" ".join(flags)] == {"dot": False, "conv": False, "reduce": True}


def test_the_jaxdl_command_applies_them_first(monkeypatch):
    from jaxdl import cli

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ.get("XLA_FLAGS", "") == " ".join(default_xla_flags())
