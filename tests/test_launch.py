"""Tests for ``jaxdl.launch``: the exact TPU pod / SLURM commands, their quoting, and the CLI's
dry-run and missing-program errors. Nothing is run: ``subprocess.run`` is replaced."""

from __future__ import annotations

import argparse
import shlex

import pytest

from jaxdl import cli, launch
from jaxdl.errors import UserError
from jaxdl.launch import GitSetup, slurm_script, tpu_pod_commands

CONFIG = "experiments/digits_resnet.py"
TRICKY = [
    "--config.mesh.strategy=fsdp",
    '--config.logging.name=it\'s a "run"',
    "--config.data.options.path=/data/my set; rm -rf $HOME",
]


def _parser() -> argparse.ArgumentParser:
    """``jaxdl``'s parser with ``launch`` added the way cli.py wires it."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "launch" not in commands.choices:
        launch.add_arguments(commands.add_parser("launch", allow_abbrev=False))
    return parser


def _launch(argv: list[str]) -> int:
    args, extra = _parser().parse_known_args(["launch", *argv])
    return launch.launch_main(args, extra)


def _remote_argv(line: str) -> list[str]:
    """The argv after ``cd DIR &&`` in a gcloud line's ``--command``."""
    argv = shlex.split(line)
    assert argv[-2] == "--command"
    remote = shlex.split(argv[-1])
    assert remote[:3] == ["cd", "jaxdl", "&&"]
    return remote[3:]


# --- TPU ------------------------------------------------------------------------------------------


def test_tpu_commands_exact():
    lines = tpu_pod_commands(
        "my-v4-32",
        "us-central2-b",
        "my-proj",
        CONFIG,
        "/mnt/shared/runs/x",
        ["--config.mesh.strategy=fsdp"],
        setup=GitSetup("https://github.com/me/jaxdl.git", "v1.2"),
        accelerator_type="v4-32",
        runtime_version="tpu-ubuntu2204-base",
    )
    ssh = "gcloud compute tpus tpu-vm ssh my-v4-32 --zone us-central2-b --project my-proj"
    assert lines == [
        "gcloud compute tpus tpu-vm create my-v4-32 --zone us-central2-b --project my-proj "
        "--accelerator-type v4-32 --version tpu-ubuntu2204-base",
        f"{ssh} --worker=all --command '(test -d jaxdl/.git || git clone --quiet "
        "https://github.com/me/jaxdl.git jaxdl) && cd jaxdl && git fetch --quiet origin v1.2 && "
        "git checkout --quiet --detach FETCH_HEAD && (test -x .venv/bin/python || python3 -m venv "
        ".venv) && .venv/bin/pip install --quiet -e '\"'\"'.[tpu]'\"'\"''",
        f"{ssh} --worker=all --command 'cd jaxdl && .venv/bin/python -m jaxdl train --config "
        f"{CONFIG} --workdir /mnt/shared/runs/x --config.mesh.strategy=fsdp "
        "--config.distributed.enabled=True'",
    ]


def test_tpu_without_setup_or_project_is_one_ssh_line():
    (line,) = tpu_pod_commands("pod", "europe-west4-a", None, CONFIG, "/nfs/run", [])
    assert line == (
        "gcloud compute tpus tpu-vm ssh pod --zone europe-west4-a --worker=all --command "
        f"'cd jaxdl && .venv/bin/python -m jaxdl train --config {CONFIG} --workdir /nfs/run "
        "--config.distributed.enabled=True'"
    )


def test_tpu_quoting_round_trips_to_the_exact_argv():
    (line,) = tpu_pod_commands("pod", "z", None, f"{CONFIG}:depth=8", "/nfs/a b", TRICKY)
    argv = _remote_argv(line)
    train = ["train", "--config", f"{CONFIG}:depth=8", "--workdir", "/nfs/a b", *TRICKY]
    assert argv == [".venv/bin/python", "-m", "jaxdl", *train, launch.ENABLE_DISTRIBUTED]
    args, extra = cli._parser().parse_known_args(argv[3:])
    assert (args.command, args.config, args.workdir) == ("train", f"{CONFIG}:depth=8", "/nfs/a b")
    assert extra == [*TRICKY, launch.ENABLE_DISTRIBUTED]


def test_an_explicit_distributed_enabled_is_kept():
    (line,) = tpu_pod_commands(
        "pod", "z", None, CONFIG, "/nfs/r", ["--config.distributed.enabled=auto"]
    )
    assert _remote_argv(line)[-1] == "--config.distributed.enabled=auto"
    assert launch.ENABLE_DISTRIBUTED not in _remote_argv(line)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"workdir": "gs://bucket/run"}, "URL"),
        ({"workdir": "runs/x"}, "absolute"),
        ({"overrides": ["--mesh.strategy=fsdp"]}, "overrides look like"),
        ({"overrides": ["--config.distributed.process_id=0"]}, "differs per process"),
        ({"tpu_name": "my pod"}, "TPU name"),
        ({"accelerator_type": "v4-32"}, "accelerator type and a version"),
    ],
)
def test_tpu_refuses_bad_inputs(kwargs, needle):
    call = {"tpu_name": "pod", "workdir": "/nfs/r", "overrides": [], **kwargs}
    with pytest.raises(UserError, match=needle):
        tpu_pod_commands(
            call.pop("tpu_name"),
            "z",
            None,
            CONFIG,
            call.pop("workdir"),
            call.pop("overrides"),
            **call,
        )


# --- SLURM ----------------------------------------------------------------------------------------

EXPECTED_SBATCH = """\
#!/bin/bash
#SBATCH --job-name=digits
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --partition=gpu
#SBATCH --account=proj1
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# Written by `jaxdl launch slurm`. One task per GPU: jax.distributed.initialize() reads
# SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID (coordinator: the
# first node, port from SLURM_JOB_ID). On SIGTERM jaxdl saves and exits 75; the job is
# requeued and the same command resumes from the workdir.
set -e
module load cuda/12
source .venv/bin/activate
rc=0
srun python -m jaxdl train --config experiments/digits_resnet.py --workdir /shared/runs/x \
--config.mesh.strategy=fsdp --config.distributed.enabled=True || rc=$?
if [ "$rc" -eq 75 ]; then
  echo "jaxdl: interrupted and saved; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""


def _sbatch(overrides=("--config.mesh.strategy=fsdp",), **kwargs) -> str:
    workdir = kwargs.pop("workdir", "/shared/runs/x")
    options = {
        "nodes": 2,
        "gpus_per_node": 4,
        "partition": "gpu",
        "time": "24:00:00",
        "account": "proj1",
        "job_name": "digits",
        "cpus_per_task": 8,
        "setup_lines": ["module load cuda/12", "source .venv/bin/activate"],
        **kwargs,
    }
    return slurm_script(CONFIG, workdir, overrides, **options)


def test_slurm_script_exact():
    assert _sbatch() == EXPECTED_SBATCH


def test_slurm_minimal_script_has_resume_lines():
    script = slurm_script(CONFIG, "runs/x", [], nodes=1, gpus_per_node=8)
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == [
        "#SBATCH --job-name=jaxdl",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=%x-%j.out",
    ]
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script


def test_srun_line_parses_back_to_the_train_command():
    script = slurm_script(CONFIG, "/shared/a b", TRICKY, nodes=3, gpus_per_node=2)
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun.endswith(" || rc=$?")
    argv = shlex.split(srun.removesuffix(" || rc=$?"))
    assert argv[:4] == ["srun", "python", "-m", "jaxdl"]
    args, extra = cli._parser().parse_known_args(argv[4:])
    assert (args.command, args.config, args.workdir) == ("train", CONFIG, "/shared/a b")
    assert extra == [*TRICKY, launch.ENABLE_DISTRIBUTED]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"nodes": 0}, "nodes must be"),
        ({"gpus_per_node": -1}, "gpus per node"),
        ({"partition": "gpu debug"}, "partition"),
        ({"time": ""}, "time"),
        ({"setup_lines": ["a\nb"]}, "single line"),
        ({"workdir": "gs://b/run"}, "URL"),
        ({"overrides": ["--config.distributed.coordinator_address=h:1"]}, "differs per process"),
    ],
)
def test_slurm_refuses_bad_inputs(kwargs, needle):
    overrides = kwargs.pop("overrides", ())
    with pytest.raises(UserError, match=needle):
        _sbatch(overrides, **kwargs)


# --- jaxdl launch -----------------------------------------------------------------------------


def test_dry_run_tpu_prints_the_commands(capsys, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", _forbidden)
    argv = ["tpu", "--config", CONFIG, "--workdir", "/nfs/r", "--tpu", "pod", "--zone", "z"]
    assert _launch([*argv, "--repo", "https://x/j.git", "--dry-run", *TRICKY]) == 0
    expected = tpu_pod_commands(
        "pod", "z", None, CONFIG, "/nfs/r", TRICKY, setup=GitSetup("https://x/j.git")
    )
    assert capsys.readouterr().out == "\n".join(expected) + "\n"


def test_dry_run_slurm_prints_the_script_and_writes_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(launch.subprocess, "run", _forbidden)
    monkeypatch.chdir(tmp_path)
    argv = ["slurm", "--config", CONFIG, "--workdir", "/shared/runs/x", "--nodes", "2"]
    argv += ["--gpus-per-node", "4", "--partition", "gpu", "--time", "24:00:00"]
    argv += ["--account", "proj1", "--job-name", "digits", "--cpus-per-task", "8"]
    argv += ["--setup", "module load cuda/12", "--setup", "source .venv/bin/activate"]
    assert _launch([*argv, "--dry-run", "--config.mesh.strategy=fsdp"]) == 0
    captured = capsys.readouterr()
    assert captured.out == EXPECTED_SBATCH
    assert captured.err == "# would write digits.sbatch and run: sbatch digits.sbatch\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["tpu", "slurm"])
def test_missing_program_without_dry_run_is_a_user_error(target, monkeypatch, tmp_path):
    monkeypatch.setattr(launch.subprocess, "run", _forbidden)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    common = ["--config", CONFIG, "--workdir", "/nfs/r"]
    extra = ["--tpu", "pod", "--zone", "z"] if target == "tpu" else ["--nodes", "1"]
    extra += [] if target == "tpu" else ["--gpus-per-node", "1"]
    program = "gcloud" if target == "tpu" else "sbatch"
    with pytest.raises(UserError, match=f"^{program} not found on PATH"):
        _launch([target, *common, *extra])
    assert list(tmp_path.iterdir()) == []


def test_runs_the_commands_in_order_and_stops_at_a_failure(monkeypatch):
    calls = []

    def fake_run(argv, check):
        calls.append(argv)
        return argparse.Namespace(returncode=0 if len(calls) == 1 else 7)

    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    argv = ["tpu", "--config", CONFIG, "--workdir", "/nfs/r", "--tpu", "pod", "--zone", "z"]
    argv += ["--accelerator-type", "v4-8", "--runtime-version", "rt", "--repo", "u"]
    assert _launch(argv) == 7
    assert [argv[4] for argv in calls] == ["create", "ssh"]  # the train line never ran


def test_slurm_writes_the_file_and_submits_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(
        launch.subprocess,
        "run",
        lambda a, check: calls.append(a) or argparse.Namespace(returncode=0),
    )
    out = tmp_path / "job.sbatch"
    argv = ["slurm", "--config", CONFIG, "--workdir", "/s/r", "--nodes", "1", "--gpus-per-node"]
    assert _launch([*argv, "2", "--out", str(out)]) == 0
    assert calls == [["sbatch", str(out)]]
    assert out.read_text() == slurm_script(CONFIG, "/s/r", [], nodes=1, gpus_per_node=2)
    assert _launch([*argv, "2", "--out", str(out)]) == 0  # the same file again is fine
    with pytest.raises(UserError, match="exists with other content"):
        _launch([*argv, "4", "--out", str(out)])


def test_missing_required_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        _launch(["slurm", "--config", CONFIG, "--workdir", "/s/r", "--nodes", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxdl: error: the following arguments are required: --gpus-per-node")
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(
    "launch" not in cli._parser()._subparsers._group_actions[0].choices,
    reason="`jaxdl launch` is not wired into jaxdl/cli.py yet",
)
def test_cli_main_dry_run(capsys):
    argv = ["launch", "tpu", "--config", CONFIG, "--workdir", "/nfs/r", "--tpu", "p"]
    assert cli.main([*argv, "--zone", "z", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("gcloud compute tpus tpu-vm ssh p --zone z")


def _forbidden(*args, **kwargs):
    raise AssertionError(f"subprocess.run called: {args}")


@pytest.mark.parametrize("value", ["False", "false", "0", False])
def test_distributed_enabled_false_from_the_command_line_stays_single_process(value, monkeypatch):
    import jax

    from jaxdl.parallel import initialize_distributed

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    assert initialize_distributed({"enabled": value}) is False and not calls
    assert initialize_distributed({"enabled": "True"}) is True and calls == [{}]


def test_an_unreadable_distributed_enabled_is_a_config_error():
    from jaxdl.errors import ConfigError
    from jaxdl.parallel import initialize_distributed

    with pytest.raises(ConfigError, match="distributed.enabled must be 'auto', True or False"):
        initialize_distributed({"enabled": "maybe"})
