"""Experiment configs: Python files returning an ``ml_collections.ConfigDict``.

``load_config("experiments/x.py:depth=18", ["--config.optimizer.learning_rate=0.05"])``
loads the file
(big_vision style ``path[:arg]``) and applies command-line overrides through ml_collections'
``config_flags``, which already type-checks values and rejects unknown keys — the same mechanism W&B
sweep agents use when they pass ``--config.x=y`` arguments.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
    """A config file, argument or override that cannot be used; the message names the problem."""


def parse_config_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config-file argument ``"depth=18,width=32"`` over typed ``defaults``.

    Values are converted to the type of their default (bool accepts true/false/1/0); an unknown name
    raises ``ConfigError``. Use it at the top of ``get_config(arg)``.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"config argument {item!r} is not of the form name=value")
        if name not in defaults:
            raise ConfigError(
                f"unknown config argument {name!r}; valid arguments: {sorted(defaults)}"
            )
        parsed[name] = _convert(name, text.strip(), defaults[name])
    return parsed


def _convert(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"config argument {name}={text!r} is not a boolean")
    try:
        return type(default)(text) if default is not None else text
    except ValueError:
        raise ConfigError(
            f"config argument {name}={text!r} is not of type {type(default).__name__}"
        ) from None


def _one_line(error: BaseException) -> str:
    """The last informative line of a (possibly multi-line) library error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    informative = [line for line in lines if not line.startswith(("Traceback", "File ", "^"))]
    line = (informative or lines or [type(error).__name__])[-1]
    # Errors re-raised through config_flags carry a "package.module.ErrorClass: " prefix.
    head, sep, rest = line.partition(": ")
    return rest if sep and "." in head and " " not in head else line


def _check_override_keys(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Names the first override whose key path does not exist in ``config``."""
    for override in overrides:
        path = override.removeprefix("--config.").split("=", 1)[0]
        node: Any = config
        walked = []
        for key in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(walked) or "config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(f"unknown config key {path!r} (valid keys of {where}: {valid})")
            walked.append(key)
            node = node[key]


def load_config(config_arg: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]`` and applies ``--config.a.b=value`` overrides; raises ``ConfigError``."""
    path = config_arg.split(":", 1)[0]
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    bad = [arg for arg in overrides if not arg.startswith("--config.")]
    if bad:
        raise ConfigError(f"unexpected argument {bad[0]!r}; overrides look like --config.a.b=value")
    _check_defines_get_config(path)
    config = _parse(config_arg, [])
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    _check_override_keys(config, overrides)
    return _parse(config_arg, overrides) if overrides else config


def _check_defines_get_config(path: str) -> None:
    """Fails early on a file that is not valid Python or has no top-level ``get_config``.

    config_flags loads every file under one module name, so a file lacking ``get_config`` would
    otherwise silently return the previously loaded file's config.
    """
    with open(path) as handle:
        source = handle.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        raise ConfigError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    if not any(
        isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body
    ):
        raise ConfigError(f"{path} does not define get_config()")


def _parse(config_arg: str, overrides: Sequence[str]) -> Any:
    argv = ["jaxdl", f"--config={config_arg}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    try:
        flag_values(argv)
        return flag_values.config
    except flags.Error as error:
        message = _one_line(error)
        if "not supported for overriding" in message:
            message = message.split(". Currently")[0] + " (declare it with config_dict.placeholder)"
        raise ConfigError(message) from None
    except Exception as error:  # noqa: BLE001 - any error raised by user config code
        raise ConfigError(
            f"cannot load config {config_arg}: {type(error).__name__}: {_one_line(error)}"
        ) from None


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
    """Writes the resolved config as JSON so a run can be reproduced and re-evaluated."""
    with open(path, "w") as handle:
        handle.write(config.to_json_best_effort(indent=2, sort_keys=True))
        handle.write("\n")


def read_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads a config saved by ``save_config``."""
    if not os.path.isfile(path):
        raise ConfigError(f"no saved config at {path}")
    with open(path) as handle:
        return ml_collections.ConfigDict(json.load(handle))
