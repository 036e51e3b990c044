"""Tests for the ``jaxdl`` command line: usage errors are one line on stderr and exit 2.

Each case runs ``python -m jaxdl`` in a subprocess (as a user would) and fails before any training.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "experiments" / "digits_resnet.py")


def run_jaxdl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "jaxdl", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, exactly one stderr line starting 'jaxdl: error:' that names every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxdl: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_unknown_config_key_exits_2_naming_the_key(tmp_path):
    workdir = tmp_path / "run"
    result = run_jaxdl(
        "train", "--config", DIGITS, "--workdir", str(workdir), "--config.model.dept=3"
    )
    assert_usage_error(result, "model.dept")
    assert not workdir.exists()  # nothing is written for a rejected command


def test_wrong_override_type_exits_2_naming_field_and_value(tmp_path):
    result = run_jaxdl(
        "train", "--config", DIGITS, "--workdir", str(tmp_path), "--config.model.depth=abc"
    )
    assert_usage_error(result, "model.depth", "abc")


def test_missing_config_file_exits_2_naming_the_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    result = run_jaxdl("train", "--config", missing, "--workdir", str(tmp_path / "run"))
    assert_usage_error(result, missing)


def test_bad_config_file_arg_exits_2_naming_the_argument(tmp_path):
    result = run_jaxdl("train", "--config", f"{DIGITS}:dept=3", "--workdir", str(tmp_path))
    assert_usage_error(result, "dept")


def test_malformed_override_exits_2_naming_it(tmp_path):
    result = run_jaxdl("train", "--config", DIGITS, "--workdir", str(tmp_path), "model.depth=3")
    assert_usage_error(result, "model.depth=3")


def test_invalid_config_value_exits_2_naming_the_value(tmp_path):
    workdir = tmp_path / "run"
    result = run_jaxdl(
        "train",
        "--config",
        DIGITS,
        "--workdir",
        str(workdir),
        "--config.model.name=no_such_model",
    )
    assert_usage_error(result, "no_such_model")
    assert not workdir.exists()


def test_config_file_without_get_config_exits_2_naming_it(tmp_path):
    path = tmp_path / "no_get_config.py"
    path.write_text("LEARNING_RATE = 0.1\n")
    result = run_jaxdl("train", "--config", str(path), "--workdir", str(tmp_path / "run"))
    assert_usage_error(result, "get_config")


def test_a_bug_in_a_config_file_keeps_its_traceback_and_exits_1(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text("def get_config(arg=None):\n    return 1 / 0\n")
    result = run_jaxdl("train", "--config", str(path), "--workdir", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert str(path) in result.stderr  # the frame in the user's file is shown
    assert not (tmp_path / "run").exists()


def test_a_config_argument_error_raised_by_the_file_stays_one_line(tmp_path):
    result = run_jaxdl(
        "train", "--config", f"{DIGITS}:depth=deep", "--workdir", str(tmp_path / "run")
    )
    assert_usage_error(result, "depth")


def test_train_without_config_exits_2_naming_the_flag(tmp_path):
    result = run_jaxdl("train", "--workdir", str(tmp_path))
    assert_usage_error(result, "--config")


def test_evaluate_missing_workdir_exits_2_naming_it(tmp_path):
    missing = str(tmp_path / "no_run_here")
    result = run_jaxdl("evaluate", "--workdir", missing)
    assert_usage_error(result, missing)


def test_evaluate_workdir_without_saved_config_exits_2(tmp_path):
    result = run_jaxdl("evaluate", "--workdir", str(tmp_path))
    assert_usage_error(result, str(tmp_path / "config.json"))


def test_evaluate_rejects_unknown_arguments(tmp_path):
    result = run_jaxdl("evaluate", "--workdir", str(tmp_path), "--bogus")
    assert_usage_error(result, "--bogus")


def test_evaluate_and_transcribe_take_only_decoder_overrides(tmp_path):
    result = run_jaxdl("evaluate", "--workdir", str(tmp_path), "--config.model.d_model=8")
    assert_usage_error(result, "--config.model.d_model=8", "--config.task.decoder.KEY=VALUE")
    result = run_jaxdl("transcribe", "--workdir", str(tmp_path), "a.wav", "--config.task.x=1")
    assert_usage_error(result, "--config.task.x=1")
    result = run_jaxdl("predict", "--workdir", str(tmp_path), "--config.task.decoder.lm_order=3")
    assert_usage_error(result, "unrecognized arguments")


def test_decoder_overrides_parse_literals_and_extend_the_saved_decoder():
    import ml_collections

    from jaxdl.cli import decoder_overrides, with_decoder_settings

    settings = decoder_overrides(
        [
            "--config.task.decoder.beam_width=16",
            "--config.task.decoder.lm_unit=word",
            "--config.task.decoder.token_min_log_prob=-8.0",
        ]
    )
    assert settings == {"beam_width": 16, "lm_unit": "word", "token_min_log_prob": -8.0}
    saved = ml_collections.ConfigDict({"task": {"name": "ctc", "decoder": {"lm_order": 6}}})
    saved.lock()
    config = with_decoder_settings(saved, settings)
    assert config.task.decoder.to_dict() == {"lm_order": 6, **settings}
    assert saved.task.decoder.to_dict() == {"lm_order": 6}  # the saved config is untouched
    assert with_decoder_settings(
        ml_collections.ConfigDict({"task": {"name": "ctc"}}), {"beam_width": 4}
    ).task.decoder.to_dict() == {"beam_width": 4}


def test_unknown_subcommand_exits_2_naming_it():
    assert_usage_error(run_jaxdl("frobnicate"), "frobnicate")


def test_no_subcommand_exits_2():
    assert_usage_error(run_jaxdl(), "command")


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--help",), ("train", "evaluate")),
        (("train", "--help"), ("--config", "--workdir")),
        (("evaluate", "--help"), ("--workdir", "--split")),
    ],
)
def test_help_exits_0_and_lists_the_options(args, expected):
    result = run_jaxdl(*args)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout


def test_errors_after_jax_starts_are_one_line_without_tpu_noise(tmp_path):
    """With libtpu installed (``make test``) but no TPU, nothing but the error reaches stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-m", "jaxdl", "train", "--config", DIGITS, "--workdir", str(tmp_path)]
        + ["--config.mesh.data=3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_usage_error(result, "mesh.data=3 has no effect")


def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a directory")
    result = run_jaxdl("train", "--config", DIGITS, "--workdir", str(path))
    assert_usage_error(result, "is not a directory")


def test_evaluate_without_checkpoints_is_refused_and_creates_nothing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_jaxdl("evaluate", "--workdir", str(tmp_path))
    assert_usage_error(result, "no checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
