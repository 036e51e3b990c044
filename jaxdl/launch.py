"""``jaxdl launch tpu|slurm``: the commands that run ``jaxdl train`` on a cluster.

``tpu_pod_commands`` builds the ``gcloud compute tpus tpu-vm ssh --worker=all`` lines for a TPU VM
pod slice, ``slurm_script`` an sbatch file with one task per GPU. Both only build text; nothing is
run until ``launch_main`` (``jaxdl launch``) is called without ``--dry-run``.

``jax.distributed.initialize()`` finds the cluster by itself in both places (the TPU VM metadata
server; SLURM's ``SLURM_STEP_NODELIST``/``SLURM_NTASKS``/``SLURM_PROCID``/``SLURM_LOCALID``, with
the coordinator on the first node and a port derived from ``SLURM_JOB_ID``), so the train command
only adds ``--config.distributed.enabled=True`` (on a TPU VM the ``auto`` default sees no SLURM or
GKE variable and would stay single-process).

The workdir must be one directory every process can write: jaxdl opens it with local file APIs
(``os``, ``open``, Orbax on ``os.path.abspath(workdir)``, the ``.jaxdl.lock`` file), so ``gs://``
URLs are refused; use NFS/Filestore or a bucket mounted with gcsfuse on every worker.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from jaxdl.errors import UserError

ENABLE_DISTRIBUTED = "--config.distributed.enabled=True"
# Per-process fields: a launcher starts every process with the same command, so these cannot be
# given here (JAX's cluster detection supplies them).
_PER_PROCESS_FIELDS = ("coordinator_address", "num_processes", "process_id")
# Values written into ``#SBATCH`` lines or gcloud resource names: sbatch does not parse shell
# quoting there, so whitespace, quotes and ``#`` are refused instead of quoted.
_PLAIN = re.compile(r"[^\s'\"#\\]+")


@dataclass(frozen=True)
class GitSetup:
    """Clone (or update) ``repo`` at ``ref`` on every worker and ``pip install -e .[extras]`` it
    into ``<remote_dir>/.venv``."""

    repo: str
    ref: str = "main"
    extras: str = "tpu"

    def command(self, remote_dir: str) -> str:
        """The remote shell line (idempotent: an existing clone and venv are reused)."""
        d, q = remote_dir, shlex.quote
        target = "." if not self.extras else f".[{self.extras}]"
        return (
            f"(test -d {q(d + '/.git')} || git clone --quiet {q(self.repo)} {q(d)}) && "
            f"cd {q(d)} && git fetch --quiet origin {q(self.ref)} && "
            "git checkout --quiet --detach FETCH_HEAD && "
            "(test -x .venv/bin/python || python3 -m venv .venv) && "
            f".venv/bin/pip install --quiet -e {q(target)}"
        )


def _check_plain(name: str, value: str | None) -> None:
    if value is not None and not _PLAIN.fullmatch(value):
        raise UserError(f"{name} {value!r} must be non-empty, without spaces, quotes or '#'")


def _check_workdir(workdir: str, *, absolute: bool) -> None:
    if "://" in workdir:
        raise UserError(
            f"workdir {workdir} is a URL; jaxdl writes workdirs with local file APIs: use a path "
            "on storage every worker mounts (NFS/Filestore, or the bucket mounted with gcsfuse)"
        )
    if absolute and not os.path.isabs(workdir):
        raise UserError(
            f"workdir {workdir} must be an absolute path on storage every worker mounts "
            "(a relative one would be each worker's own local directory)"
        )


def train_argv(config_arg: str, workdir: str, overrides: Sequence[str]) -> list[str]:
    """``train --config C --workdir W [overrides] --config.distributed.enabled=True`` (the last
    only when the overrides do not set ``distributed.enabled`` themselves)."""
    overrides = list(overrides)
    for override in overrides:
        if not override.startswith("--config."):
            raise UserError(f"unexpected argument {override!r}; overrides look like --config.a.b=v")
        key = override.removeprefix("--config.").split("=", 1)[0]
        if key in {f"distributed.{field}" for field in _PER_PROCESS_FIELDS}:
            raise UserError(
                f"--config.{key} differs per process; the launcher leaves it to JAX's cluster "
                "detection"
            )
    if not any(o.startswith("--config.distributed.enabled=") for o in overrides):
        overrides.append(ENABLE_DISTRIBUTED)
    return ["train", "--config", config_arg, "--workdir", workdir, *overrides]


# --- TPU VM pod slice -----------------------------------------------------------------------------


def tpu_pod_argvs(
    tpu_name: str,
    zone: str,
    project: str | None,
    config_arg: str,
    workdir: str,
    overrides: Sequence[str],
    *,
    setup: GitSetup | None = None,
    remote_dir: str = "jaxdl",
    python: str = ".venv/bin/python",
    accelerator_type: str | None = None,
    runtime_version: str | None = None,
) -> list[list[str]]:
    """The argv of each command ``tpu_pod_commands`` prints, in order."""
    for name, value in (("TPU name", tpu_name), ("zone", zone), ("project", project)):
        _check_plain(name, value)
    _check_plain("accelerator type", accelerator_type)
    _check_plain("runtime version", runtime_version)
    _check_workdir(workdir, absolute=True)
    train = train_argv(config_arg, workdir, overrides)
    where = ["--zone", zone, *(["--project", project] if project else [])]
    argvs = []
    if accelerator_type or runtime_version:
        if not (accelerator_type and runtime_version):
            raise UserError("creating the TPU VM needs both an accelerator type and a version")
        create = ["gcloud", "compute", "tpus", "tpu-vm", "create", tpu_name, *where]
        create += ["--accelerator-type", accelerator_type, "--version", runtime_version]
        argvs.append(create)
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, *where, "--worker=all"]
    if setup is not None:
        argvs.append([*ssh, "--command", setup.command(remote_dir)])
    run = f"cd {shlex.quote(remote_dir)} && {shlex.join([python, '-m', 'jaxdl', *train])}"
    argvs.append([*ssh, "--command", run])
    return argvs


def tpu_pod_commands(
    tpu_name: str,
    zone: str,
    project: str | None,
    config_arg: str,
    workdir: str,
    overrides: Sequence[str],
    *,
    setup: GitSetup | None = None,
    remote_dir: str = "jaxdl",
    python: str = ".venv/bin/python",
    accelerator_type: str | None = None,
    runtime_version: str | None = None,
) -> list[str]:
    """Shell lines for a TPU VM pod slice: [create the VM (with ``accelerator_type`` and
    ``runtime_version``)], [clone and install on every worker (``setup``)], then ``jaxdl train``
    on every worker at once (``--worker=all``; JAX finds the coordinator from the VM metadata).

    ``config_arg`` is relative to ``remote_dir`` on the workers (or absolute); ``workdir`` must be
    an absolute path on storage all workers mount. Re-running the last line resumes the run.
    """
    argvs = tpu_pod_argvs(
        tpu_name,
        zone,
        project,
        config_arg,
        workdir,
        overrides,
        setup=setup,
        remote_dir=remote_dir,
        python=python,
        accelerator_type=accelerator_type,
        runtime_version=runtime_version,
    )
    return [shlex.join(argv) for argv in argvs]


# --- SLURM ----------------------------------------------------------------------------------------


def slurm_script(
    config_arg: str,
    workdir: str,
    overrides: Sequence[str],
    *,
    nodes: int,
    gpus_per_node: int,
    partition: str | None = None,
    time: str | None = None,
    account: str | None = None,
    job_name: str = "jaxdl",
    cpus_per_task: int | None = None,
    setup_lines: Sequence[str] = (),
    python: str = "python",
    signal_seconds: int = 120,
) -> str:
    """An sbatch file running ``jaxdl train`` as one task per GPU on ``nodes`` nodes.

    One task per GPU because JAX's SLURM detection pins each process to GPU ``SLURM_LOCALID``
    (jaxdl passes no ``local_device_ids``): one task per node would use only GPU 0 of each node.
    SLURM signals the tasks ``signal_seconds`` before the time limit; jaxdl saves and exits 75, the
    script requeues the job (``--requeue`` also covers preemption) and the same command resumes
    from the workdir. Relative paths are relative to the directory ``sbatch`` is run from.
    """
    for name, value in (("nodes", nodes), ("gpus per node", gpus_per_node)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, not {value!r}")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise UserError(f"cpus per task must be a positive integer, not {cpus_per_task!r}")
    if signal_seconds < 1:
        raise UserError(f"signal seconds must be positive, not {signal_seconds!r}")
    for name, value in (
        ("job name", job_name),
        ("partition", partition),
        ("time", time),
        ("account", account),
    ):
        _check_plain(name, value)
    if any("\n" in line or "\r" in line for line in setup_lines):
        raise UserError("each setup line must be a single line")
    _check_workdir(workdir, absolute=False)
    train = train_argv(config_arg, workdir, overrides)
    options = [
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={gpus_per_node}",
        f"--gpus-per-node={gpus_per_node}",
        *([f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []),
        *([f"--partition={partition}"] if partition else []),
        *([f"--account={account}"] if account else []),
        *([f"--time={time}"] if time else []),
        f"--signal=TERM@{signal_seconds}",
        "--requeue",
        "--open-mode=append",
        "--output=%x-%j.out",
    ]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {option}" for option in options),
        "# Written by `jaxdl launch slurm`. One task per GPU: jax.distributed.initialize() reads",
        "# SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID (coordinator: the",
        "# first node, port from SLURM_JOB_ID). On SIGTERM jaxdl saves and exits 75; the job is",
        "# requeued and the same command resumes from the workdir.",
        "set -e",
        *setup_lines,
        "rc=0",
        f"srun {shlex.join([python, '-m', 'jaxdl', *train])} || rc=$?",
        'if [ "$rc" -eq 75 ]; then',
        '  echo "jaxdl: interrupted and saved; requeueing job $SLURM_JOB_ID" >&2',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxdl launch`` subcommands ``tpu`` and ``slurm`` (``parser`` is ``launch``'s)."""
    targets = parser.add_subparsers(dest="launch_target", required=True)
    tpu = targets.add_parser(
        "tpu", help="gcloud commands for a TPU VM pod slice (all workers)", allow_abbrev=False
    )
    slurm = targets.add_parser(
        "slurm", help="an sbatch file (one task per GPU), submitted with sbatch", allow_abbrev=False
    )
    for sub in (tpu, slurm):
        sub.add_argument("--config", required=True, help="experiment file, optionally path:arg")
        sub.add_argument("--workdir", required=True, help="on storage every process can write")
        sub.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    tpu.add_argument("--tpu", required=True, help="TPU VM name")
    tpu.add_argument("--zone", required=True)
    tpu.add_argument("--project", help="default: gcloud's configured project")
    tpu.add_argument("--repo", help="git URL to clone and pip install on every worker first")
    tpu.add_argument("--ref", default="main", help="branch, tag or commit of --repo")
    tpu.add_argument("--extras", default="tpu", help="pip extras installed with --repo")
    tpu.add_argument("--remote-dir", default="jaxdl", help="the checkout on each worker")
    tpu.add_argument("--python", default=".venv/bin/python", help="relative to --remote-dir")
    tpu.add_argument("--accelerator-type", help="create the TPU VM first, e.g. v5p-64")
    tpu.add_argument("--runtime-version", help="its software version (with --accelerator-type)")
    slurm.add_argument("--nodes", required=True, type=int)
    slurm.add_argument("--gpus-per-node", required=True, type=int, help="= tasks per node")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", help="time limit, e.g. 24:00:00")
    slurm.add_argument("--account")
    slurm.add_argument("--job-name", default="jaxdl")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument(
        "--setup", action="append", default=[], help="a shell line before srun (repeatable)"
    )
    slurm.add_argument("--python", default="python", help="the interpreter srun starts")
    slurm.add_argument("--out", help="the sbatch file to write (default JOB_NAME.sbatch)")


def _require(program: str) -> None:
    if shutil.which(program) is None:
        raise UserError(f"{program} not found on PATH; --dry-run prints the commands instead")


def launch_main(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
    """``jaxdl launch``: prints (``--dry-run``) or runs the launch commands; returns the exit
    status of the first that fails (else 0)."""
    if args.launch_target == "tpu":
        setup = GitSetup(args.repo, args.ref, args.extras) if args.repo else None
        argvs = tpu_pod_argvs(
            args.tpu,
            args.zone,
            args.project,
            args.config,
            args.workdir,
            overrides,
            setup=setup,
            remote_dir=args.remote_dir,
            python=args.python,
            accelerator_type=args.accelerator_type,
            runtime_version=args.runtime_version,
        )
        if args.dry_run:
            print("\n".join(shlex.join(argv) for argv in argvs))
            return 0
        _require("gcloud")
        for argv in argvs:
            print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
            code = subprocess.run(argv, check=False).returncode
            if code:
                return code
        return 0

    script = slurm_script(
        args.config,
        args.workdir,
        overrides,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
        job_name=args.job_name,
        cpus_per_task=args.cpus_per_task,
        setup_lines=args.setup,
        python=args.python,
    )
    out = args.out or f"{args.job_name}.sbatch"
    submit = ["sbatch", out]
    if args.dry_run:
        sys.stdout.write(script)  # exactly the file: `--dry-run > job.sbatch` is the same job
        print(f"# would write {out} and run: {shlex.join(submit)}", file=sys.stderr)
        return 0
    _require("sbatch")
    if os.path.exists(out):
        with open(out) as handle:
            if handle.read() != script:
                raise UserError(f"{out} exists with other content; remove it or pass --out")
    with open(out, "w") as handle:
        handle.write(script)
    print(f"+ {shlex.join(submit)}", file=sys.stderr, flush=True)
    return subprocess.run(submit, check=False).returncode
