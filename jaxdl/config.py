"""Experiment configs: Python files returning an ``ml_collections.ConfigDict``.

``load_config("experiments/x.py:depth=18", ["--config.optimizer.learning_rate=0.05"])`` imports the
file (big_vision style ``path[:arg]``) as a fresh module, calls its ``get_config``, and applies
command-line overrides through ml_collections' ``config_flags``, which type-checks values — the same
mechanism W&B sweep agents use when they pass ``--config.x=y`` arguments.

Errors in what the user supplied (missing file, syntax error, bad ``:arg``, unknown override key,
wrong override type) raise :class:`ConfigError`, a :class:`jaxdl.errors.UserError` with a one-line
message. Any other exception raised while running the file (a ``ZeroDivisionError`` or a
``NameError`` in ``get_config``) is a bug in the config file and propagates unchanged, with its
traceback.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import os
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import CustomJSONEncoder

from jaxdl.errors import ConfigError

__all__ = [
    "MISSING",
    "ConfigError",
    "config_diff",
    "load_config",
    "parse_config_arg",
    "read_config",
    "save_config",
]


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


# --- loading --------------------------------------------------------------------------------------


def load_config(config_arg: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]``, applies ``--config.a.b=value`` overrides, returns the locked config.

    Raises ``ConfigError`` for what the user got wrong; exceptions raised by the file's own code
    (other than ``ConfigError``/``UserError``, which it may raise on purpose) propagate unchanged.
    """
    path, sep, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    bad = [override for override in overrides if not override.startswith("--config.")]
    if bad:
        raise ConfigError(f"unexpected argument {bad[0]!r}; overrides look like --config.a.b=value")
    module = _import_config_file(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{path} does not define get_config()")
    config = _call_get_config(get_config, arg if sep else None, path)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() must return an ml_collections.ConfigDict, "
            f"not {type(config).__name__}"
        )
    if isinstance(config, ml_collections.FrozenConfigDict):
        config = config.as_configdict()
    _check_override_keys(config, overrides)
    return _apply_overrides(config, overrides)


_module_ids = itertools.count()


def _import_config_file(path: str) -> types.ModuleType:
    """Executes ``path`` as a new module with a name of its own (never shared with another file).

    A syntax error in the file is a ``ConfigError`` naming ``path:line``; any exception raised by
    its top-level code propagates unchanged.
    """
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_jaxdl_config_{next(_module_ids)}_{stem}"
    # An explicit loader so that a file without the .py suffix loads too (as with config_flags).
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as error:
        raise ConfigError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    except ValueError as error:  # e.g. null bytes in the source
        raise ConfigError(f"{path}: not a Python source file: {error}") from None
    module = importlib.util.module_from_spec(spec)
    # Registered (under its unique name) like any imported module, so pickling and dataclasses
    # defined in the file work; removed again if the file fails.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # running the user's config file is the point
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _call_get_config(get_config: Callable[..., Any], arg: str | None, path: str) -> Any:
    """Calls ``get_config(arg)``, or ``get_config()`` when no ``:arg`` was given and it allows it.

    A signature that cannot take the call is a ``ConfigError``; exceptions raised inside
    ``get_config`` propagate unchanged.
    """
    try:
        signature: inspect.Signature | None = inspect.signature(get_config)
    except (TypeError, ValueError):  # a builtin or C callable: just call it
        signature = None
    if arg is not None:
        args: tuple[Any, ...] = (arg,)
        if signature is not None and not _binds(signature, arg):
            raise ConfigError(
                f"{path}: get_config{signature} does not take the argument {arg!r} given after ':'"
            )
    elif signature is None or _binds(signature):
        args = ()
    elif _binds(signature, None):  # ``def get_config(arg):`` without ``:arg`` gets None
        args = (None,)
    else:
        raise ConfigError(
            f"{path}: get_config{signature} must take no argument or one (the text after ':')"
        )
    return get_config(*args)


def _binds(signature: inspect.Signature, *args: Any) -> bool:
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


# --- overrides ------------------------------------------------------------------------------------


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


def _apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Sets ``--config.a.b=value`` overrides on ``config`` (in place) with ``config_flags``.

    ``config_flags`` parses each value with the parser of the field's type (int, float, bool, str,
    tuple, ConfigDict; placeholders use their declared type). The config is locked (no new keys).
    """
    argv = ["jaxdl", *overrides]
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        flag_values(argv)
    except flags.Error as error:
        raise ConfigError(_override_message(error)) from None
    return flag_values.config


def _override_message(error: flags.Error) -> str:
    message = _one_line(error)
    if "not supported for overriding" in message:
        message = message.split(". Currently")[0]
        if "NoneType" in message:
            message += " (declare it with config_dict.placeholder(type) to make it overridable)"
        elif "'list'" in message:
            message += " (make it a tuple to override it)"
    return message


def _one_line(error: BaseException) -> str:
    """The last informative line of a (possibly multi-line) library error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    informative = [line for line in lines if not line.startswith(("Traceback", "File ", "^"))]
    line = (informative or lines or [type(error).__name__])[-1]
    # Errors re-raised through config_flags carry a "package.module.ErrorClass: " prefix.
    head, sep, rest = line.partition(": ")
    return rest if sep and "." in head and " " not in head else line


# --- save / read / diff ---------------------------------------------------------------------------


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
    """Writes the resolved config as JSON so a run can be reproduced and re-evaluated."""
    with open(path, "w") as handle:
        handle.write(config.to_json_best_effort(indent=2, sort_keys=True))
        handle.write("\n")


def read_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads a config saved by ``save_config``; an unreadable or corrupt file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"no saved config at {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"saved config {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read saved config {path}: {error.strerror or error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"saved config {path} is not a JSON object (got {type(values).__name__})")
    return ml_collections.ConfigDict(values)


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing.MISSING
"""Stands for the absent side of a key that only one config of a ``config_diff`` has."""


def config_diff(
    old: Mapping[str, Any] | ml_collections.ConfigDict,
    new: Mapping[str, Any] | ml_collections.ConfigDict,
) -> dict[str, tuple[Any, Any]]:
    """Every leaf that differs between two configs: ``{"a.b": (old_value, new_value)}``.

    Both sides are first normalised through JSON exactly as ``save_config`` writes them (tuples
    become lists, placeholders None), so a freshly loaded config compares equal to the one read
    back from a run's ``config.json``. A leaf present on one side only maps to ``(MISSING, new)``
    or ``(old, MISSING)`` (an added or removed sub-dict gives one entry per leaf; an empty one, one
    entry for itself); a key that is a dict on one side and a value on the other is one entry.
    Values in the result are the normalised (JSON) values. Paths are sorted.
    """
    diff: dict[str, tuple[Any, Any]] = {}
    _diff_into(diff, "", _normalise(old), _normalise(new))
    return dict(sorted(diff.items()))


def _normalise(config: Mapping[str, Any] | ml_collections.ConfigDict) -> Any:
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, cls=CustomJSONEncoder))


def _diff_into(diff: dict[str, tuple[Any, Any]], prefix: str, old: Any, new: Any) -> None:
    if _is_branch(old, new) or _is_branch(new, old):
        old_tree = old if isinstance(old, dict) else {}
        new_tree = new if isinstance(new, dict) else {}
        for key in old_tree.keys() | new_tree.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            _diff_into(diff, path, old_tree.get(key, MISSING), new_tree.get(key, MISSING))
    elif _json_text(old) != _json_text(new):
        diff[prefix] = (old, new)


def _is_branch(value: Any, other: Any) -> bool:
    """Whether to recurse: both dicts, or a non-empty dict whose counterpart is absent."""
    return isinstance(value, dict) and (
        isinstance(other, dict) or (other is MISSING and bool(value))
    )


def _json_text(value: Any) -> str | None:
    """Canonical JSON of a normalised value: ``1`` vs ``1.0`` vs ``True`` differ, NaN == NaN."""
    return None if value is MISSING else json.dumps(value, sort_keys=True)
