"""W&B sweep YAML files, read for ``jaxdl sweep`` (the same file ``wandb agent`` runs).

The subset used: ``method`` (grid | random | bayes), ``metric`` (``name``, ``goal``),
``parameters`` (each ``value``, ``values``, or ``min``/``max`` with a ``distribution``:
uniform, int_uniform, log_uniform_values, q_uniform), ``run_cap``, ``early_terminate`` (any type:
median pruning after ``min_iter`` evaluations, see ``jaxdl.sweeps.runner``), and ``command``, whose
``--config`` argument and fixed ``--config.*`` flags name the experiment. Parameter names are the
config paths the agent passes as ``--config.a.b=value``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from jaxdl.errors import ConfigError

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "q_uniform", "categorical")
SPEC_KEYS = {
    "program", "method", "metric", "parameters", "run_cap", "command", "name", "description",
    "early_terminate", "project", "entity",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One swept config field: fixed, categorical, or a numeric range."""

    name: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    distribution: str = "categorical"
    q: float | None = None

    @property
    def flag(self) -> str:
        return self.name.removeprefix("config.")

    def grid(self) -> tuple[Any, ...]:
        if self.distribution != "categorical":
            raise ConfigError(
                f"grid search needs values for parameter {self.name!r}, not a "
                f"{self.distribution} range"
            )
        return self.values

    def sample(self, rng: np.random.Generator) -> Any:
        """A random draw (``method: random``)."""
        if self.distribution == "categorical":
            return self.values[int(rng.integers(len(self.values)))]
        if self.distribution == "int_uniform":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.distribution == "log_uniform_values":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        value = float(rng.uniform(self.low, self.high))
        if self.distribution == "q_uniform":
            value = round(value / self.q) * self.q
        return value


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    method: str
    metric: str
    goal: str
    parameters: tuple[Parameter, ...]
    run_cap: int | None
    config: str
    fixed_overrides: tuple[str, ...]
    # Evaluations a trial must have before median pruning may stop it; None: no pruning.
    prune_after: int | None = None

    def grid_trials(self) -> list[dict[str, Any]]:
        """Every combination, in the order of the file's parameters (last varies fastest)."""
        names = [p.name for p in self.parameters]
        combos = itertools.product(*(p.grid() for p in self.parameters))
        trials = [dict(zip(names, combo, strict=True)) for combo in combos]
        return trials[: self.run_cap] if self.run_cap else trials

    def random_trials(self, seed: int) -> list[dict[str, Any]]:
        """``run_cap`` seeded draws (the same list every time the sweep is re-run)."""
        if not self.run_cap:
            raise ConfigError("method: random needs run_cap (how many trials to draw)")
        rng = np.random.default_rng(seed)
        return [{p.name: p.sample(rng) for p in self.parameters} for _ in range(self.run_cap)]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The flags the agent would pass: ``--config.a.b=value`` per parameter."""
        return [f"--{name}={value}" for name, value in params.items()]


def _parameter(name: str, body: Any) -> Parameter:
    if not name.startswith("config."):
        raise ConfigError(f"sweep parameter {name!r} must be a config path like config.a.b")
    if not isinstance(body, Mapping):
        raise ConfigError(f"sweep parameter {name!r} must be a mapping (value/values/min/max)")
    if "value" in body:
        return Parameter(name, (body["value"],))
    if "values" in body:
        values = tuple(body["values"])
        if not values:
            raise ConfigError(f"sweep parameter {name!r} has an empty values list")
        return Parameter(name, values)
    if "min" not in body or "max" not in body:
        raise ConfigError(f"sweep parameter {name!r} needs value, values, or min and max")
    low, high = body["min"], body["max"]
    ints = isinstance(low, int) and isinstance(high, int)
    distribution = body.get("distribution", "int_uniform" if ints else "uniform")
    if distribution not in DISTRIBUTIONS[:-1]:
        raise ConfigError(
            f"sweep parameter {name!r}: distribution {distribution!r} is not one of "
            f"{list(DISTRIBUTIONS[:-1])}"
        )
    if not low < high or (distribution == "log_uniform_values" and low <= 0):
        raise ConfigError(f"sweep parameter {name!r}: need 0 < min < max, got {low}, {high}")
    q = float(body.get("q", 1.0)) if distribution == "q_uniform" else None
    return Parameter(name, (), float(low), float(high), distribution, q)


def _prune_after(early_terminate: Any, where: str) -> int | None:
    """``early_terminate.min_iter`` (default 3): evaluations before a trial may be pruned."""
    if not early_terminate:
        return None
    if not isinstance(early_terminate, Mapping):
        raise ConfigError(f"{where}: early_terminate must be a mapping (type, min_iter)")
    min_iter = early_terminate.get("min_iter", 3)
    if isinstance(min_iter, bool) or not isinstance(min_iter, int) or min_iter < 1:
        raise ConfigError(f"{where}: early_terminate.min_iter must be an integer >= 1")
    return min_iter


def _command_config(command: Sequence[Any]) -> tuple[str, tuple[str, ...]]:
    """The ``--config`` value and fixed ``--config.*`` flags of the file's command."""
    tokens = [str(t) for t in command]
    config, fixed = None, []
    for index, token in enumerate(tokens):
        if token == "--config" and index + 1 < len(tokens):
            config = tokens[index + 1]
        elif token.startswith("--config="):
            config = token.split("=", 1)[1]
        elif token.startswith("--config."):
            fixed.append(token)
    if config is None:
        raise ConfigError("the sweep's command has no --config EXPERIMENT argument")
    return config, tuple(fixed)


def parse_sweep(text: str, where: str = "sweep file") -> SweepSpec:
    """A ``SweepSpec`` from YAML text; ``ConfigError`` naming the first problem."""
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where} must be a YAML mapping")
    unknown = sorted(set(body) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {sorted(SPEC_KEYS)}")
    method = body.get("method")
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {list(METHODS)}, got {method!r}")
    metric = body.get("metric") or {}
    if not isinstance(metric, Mapping) or not metric.get("name"):
        raise ConfigError(f"{where}: metric.name is required (e.g. best_val_accuracy)")
    goal = metric.get("goal", "maximize")
    if goal not in GOALS:
        raise ConfigError(f"{where}: metric.goal must be one of {list(GOALS)}, got {goal!r}")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, Mapping) or not parameters:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping")
    run_cap = body.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise ConfigError(f"{where}: run_cap must be a positive integer, got {run_cap!r}")
    config, fixed = _command_config(body.get("command") or [])
    return SweepSpec(
        method=method,
        metric=str(metric["name"]),
        goal=goal,
        parameters=tuple(_parameter(str(k), v) for k, v in parameters.items()),
        run_cap=run_cap,
        config=config,
        fixed_overrides=fixed,
        prune_after=_prune_after(body.get("early_terminate"), where),
    )


def read_sweep(path: str) -> SweepSpec:
    """``parse_sweep`` of a file; a missing file is a one-line ``ConfigError``."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_sweep(handle.read(), path)
    except FileNotFoundError:
        raise ConfigError(f"sweep file not found: {path}") from None
