"""``jaxdl sweep SWEEP.yaml``: runs a W&B-style sweep locally, one ``jaxdl train`` per trial.

Trial ``n`` trains into ``ROOT/trial_NNN`` in its own process (log: ``ROOT/trial_NNN.log``), up
to ``parallel`` at once. Grid and random trials are fixed by the file (and the seed), Bayesian ones
are asked of an optuna TPE study kept in ``ROOT/optuna.journal`` (a file journal: several sweep
processes may share it, no database server). Everything needed to continue lives under ROOT, so
an interrupted sweep re-run with the same command continues: finished trials are read back,
unfinished ones resume their workdir (``jaxdl train`` resumes), pruned and failed ones stay so.

With ``early_terminate`` in the file (any type), trials are pruned by the median rule: from its
``min_iter``-th evaluation on, a trial whose best metric so far is worse than the median of the
finished trials' best at the same step is stopped with SIGTERM (it saves and exits; its status is
``pruned``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.sweeps.spec import SweepSpec
from jaxdl.train.workdir_lock import WorkdirLock

STATE_FILENAME = "sweep_state.json"
POLL_SECONDS = 1.0
MIN_FINISHED_TO_PRUNE = 2


def trial_workdir(root: str, number: int) -> str:
    return os.path.join(root, f"trial_{number:03d}")


def metric_value(results: dict[str, Any], name: str) -> float:
    """``name`` from a results.json: a top-level scalar (test metrics, ``best_val_*``), or
    ``val_X`` / ``test_X`` for the validation / test value of ``X``."""
    if isinstance(results.get(name), int | float):
        return float(results[name])
    for prefix, section in (("val_", results.get("val", {})), ("test_", results)):
        key = name.removeprefix(prefix)
        if name.startswith(prefix) and isinstance(section.get(key), int | float):
            return float(section[key])
    scalars = sorted(k for k, v in results.items() if isinstance(v, int | float))
    raise ConfigError(f"sweep metric {name!r} is not in results.json (scalars: {scalars})")


def _validation_key(name: str) -> str:
    """The metrics.jsonl validation field a pruning decision reads for the sweep metric."""
    return name.removeprefix("best_").removeprefix("val_")


def validation_curve(workdir: str, name: str, goal: str) -> dict[int, float]:
    """Best-so-far validation value of the metric at each evaluated step of a trial."""
    path, key, best, curve = os.path.join(workdir, "metrics.jsonl"), _validation_key(name), None, {}
    if not os.path.isfile(path):
        return curve
    with open(path) as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if row.get("split") != "val" or key not in row:
                continue
            value = float(row[key])
            better = best is None or (value > best if goal == "maximize" else value < best)
            best = value if better else best
            curve[int(row["step"])] = best
    return curve


def should_prune(
    curve: dict[int, float], finished: list[dict[int, float]], goal: str, min_evals: int = 1
) -> bool:
    """The median rule at the trial's latest evaluated step (see module docstring)."""
    if len(curve) < max(min_evals, 1) or len(finished) < MIN_FINISHED_TO_PRUNE:
        return False
    step = max(curve)
    peers = [max((v for s, v in other.items() if s <= step), default=None) for other in finished]
    peers = [p for p in peers if p is not None]
    if len(peers) < MIN_FINISHED_TO_PRUNE:
        return False
    median = float(np.median(peers))
    return curve[step] < median if goal == "maximize" else curve[step] > median


class _State:
    """``ROOT/sweep_state.json``: each trial's params and final status."""

    def __init__(self, root: str):
        self.path = os.path.join(root, STATE_FILENAME)
        self.trials: dict[str, dict[str, Any]] = {}
        if os.path.isfile(self.path):
            with open(self.path) as handle:
                self.trials = json.load(handle)["trials"]

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump({"trials": self.trials}, handle, indent=2)
        os.replace(tmp, self.path)


class _Bayes:
    """Trials asked of an optuna TPE study in ``ROOT/optuna.journal``."""

    def __init__(self, spec: SweepSpec, root: str, seed: int):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(os.path.join(root, "optuna.journal")))
        self.study = optuna.create_study(
            study_name="jaxdl",
            storage=storage,
            load_if_exists=True,
            direction=spec.goal,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        self.spec = spec

    def unfinished(self) -> list[tuple[int, dict[str, Any]]]:
        import optuna

        running = optuna.trial.TrialState.RUNNING
        return [(t.number, t.params) for t in self.study.trials if t.state == running]

    def count(self) -> int:
        return len(self.study.trials)

    def ask(self) -> tuple[int, dict[str, Any]]:
        trial = self.study.ask()
        params = {}
        for p in self.spec.parameters:
            if p.distribution == "categorical":
                params[p.name] = trial.suggest_categorical(p.name, list(p.values))
            elif p.distribution == "int_uniform":
                params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                log, step = p.distribution == "log_uniform_values", p.q
                params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=log, step=step)
        return trial.number, params

    def tell(self, number: int, value: float | None, pruned: bool) -> None:
        import optuna

        if pruned:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        elif value is None:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, value)


def _trial_source(spec: SweepSpec, root: str, seed: int) -> tuple[Iterator, Any]:
    """(an iterator of (number, params) to run, the optuna study wrapper or None)."""
    if spec.method != "bayes":
        trials = spec.grid_trials() if spec.method == "grid" else spec.random_trials(seed)
        return iter(enumerate(trials)), None
    if not spec.run_cap:
        raise ConfigError("method: bayes needs run_cap (how many trials to run)")
    bayes = _Bayes(spec, root, seed)

    def source():
        yield from bayes.unfinished()  # interrupted by an earlier run: resume their workdirs
        while bayes.count() < spec.run_cap:
            yield bayes.ask()

    return source(), bayes


def _launch(spec: SweepSpec, root: str, number: int, params: dict[str, Any], python: str):
    workdir = trial_workdir(root, number)
    command = [python, "-m", "jaxdl", "train", "--config", spec.config, "--workdir", workdir]
    command += [*spec.fixed_overrides, *spec.overrides(params)]
    log = open(os.path.join(root, f"trial_{number:03d}.log"), "ab")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return {"process": process, "log": log, "params": params, "workdir": workdir}


def _finish(spec: SweepSpec, running: dict, pruned: bool) -> dict[str, Any]:
    """The record of a trial whose process ended."""
    running["log"].close()
    code = running["process"].returncode
    record: dict[str, Any] = {"params": running["params"], "exit_code": code}
    results_path = os.path.join(running["workdir"], "results.json")
    if pruned:
        record["status"] = "pruned"
        curve = validation_curve(running["workdir"], spec.metric, spec.goal)
        record["value"] = curve[max(curve)] if curve else None
    elif code == 0 and os.path.isfile(results_path):
        with open(results_path) as handle:
            record["status"], record["value"] = "done", metric_value(json.load(handle), spec.metric)
    else:
        record["status"], record["value"] = "failed", None
    return record


def run_sweep(
    spec: SweepSpec, root: str, parallel: int = 1, seed: int = 0, python: str | None = None
) -> dict[str, dict[str, Any]]:
    """Runs (or continues) the sweep under ``root``; returns each trial's record."""
    os.makedirs(root, exist_ok=True)
    with WorkdirLock(root):  # a second sweep on the same root would rerun and overwrite trials
        return _run_locked(spec, root, parallel, seed, python or sys.executable)


def _run_locked(spec: SweepSpec, root: str, parallel: int, seed: int, python: str):
    state = _State(root)
    source, bayes = _trial_source(spec, root, seed)
    running: dict[int, dict[str, Any]] = {}
    try:
        _run_trials(spec, root, parallel, python, state, source, bayes, running)
    finally:  # interrupted: running trials save and stop; a re-run resumes them
        for trial in running.values():
            if trial["process"].poll() is None:
                trial["process"].send_signal(signal.SIGTERM)
        for trial in running.values():
            trial["process"].wait()
            trial["log"].close()
    return state.trials


def _run_trials(spec, root, parallel, python, state, source, bayes, running) -> None:
    """The scheduling loop of ``run_sweep`` (``running`` is shared for its cleanup)."""
    pending, exhausted = iter(source), False
    while running or not exhausted:
        while not exhausted and len(running) < parallel:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            number, params = item
            if state.trials.get(str(number), {}).get("status") in ("done", "pruned", "failed"):
                continue
            running[number] = _launch(spec, root, number, params, python)
        time.sleep(POLL_SECONDS if running else 0)
        finished_curves = [
            validation_curve(trial_workdir(root, int(n)), spec.metric, spec.goal)
            for n, r in state.trials.items()
            if r["status"] == "done"
        ]
        for number in list(running):
            trial = running[number]
            if spec.prune_after and trial["process"].poll() is None:
                curve = validation_curve(trial["workdir"], spec.metric, spec.goal)
                if should_prune(curve, finished_curves, spec.goal, spec.prune_after):
                    trial["pruned"] = True
                    trial["process"].send_signal(signal.SIGTERM)
            if trial["process"].poll() is None:
                continue
            record = _finish(spec, running.pop(number), trial.get("pruned", False))
            state.trials[str(number)] = record
            state.save()
            if bayes is not None:
                bayes.tell(number, record["value"], record["status"] == "pruned")
