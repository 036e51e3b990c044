"""Tests for jaxdl.config: loading experiment files, overrides, one-line ConfigErrors, save/read,
config_diff. Bugs in a config file's own code propagate with their own exception type."""

import json
import sys
import textwrap
from pathlib import Path

import ml_collections
import pytest

from jaxdl import errors
from jaxdl.config import (
    MISSING,
    ConfigError,
    config_diff,
    load_config,
    parse_config_arg,
    read_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "experiments" / "digits_resnet.py")


def write_config_file(directory: Path, name: str, body: str) -> str:
    """Writes a config file ``name`` with ``body`` (dedented) and returns its path."""
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def assert_one_line_config_error(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert isinstance(error.value, ConfigError)
    assert "\n" not in message, message
    assert message.strip(), "empty error message"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# --- loading --------------------------------------------------------------------------------------


def test_load_config_without_arg_uses_the_file_defaults():
    config = load_config(DIGITS)
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.model.depth == 20
    assert config.train.num_epochs == 30
    assert config.optimizer.learning_rate == 0.1
    assert config.optimizer.clip_global_norm is None
    assert config.logging.wandb.mode == "disabled"


def test_load_config_file_arg_reaches_get_config():
    config = load_config(f"{DIGITS}:depth=32,epochs=3")
    assert config.model.depth == 32
    assert config.train.num_epochs == 3
    assert config.train.batch_size == 64  # untouched argument keeps its default


def test_overrides_apply_on_top_of_the_file_arg_with_typed_values():
    config = load_config(
        f"{DIGITS}:depth=32",
        [
            "--config.optimizer.learning_rate=0.05",
            "--config.model.depth=34",
            "--config.logging.wandb.mode=offline",
            "--config.data.standardize=false",
        ],
    )
    assert config.optimizer.learning_rate == 0.05
    assert isinstance(config.optimizer.learning_rate, float)
    assert config.model.depth == 34  # the override wins over the file argument
    assert isinstance(config.model.depth, int)
    assert config.logging.wandb.mode == "offline"
    assert config.data.standardize is False


def test_overrides_set_placeholder_fields_with_their_declared_type():
    config = load_config(
        DIGITS,
        ["--config.optimizer.clip_global_norm=1.0", "--config.early_stopping.patience=3"],
    )
    assert config.optimizer.clip_global_norm == 1.0
    assert isinstance(config.optimizer.clip_global_norm, float)
    assert config.early_stopping.patience == 3
    assert isinstance(config.early_stopping.patience, int)


def test_overrides_do_not_leak_into_a_later_load():
    load_config(DIGITS, ["--config.model.depth=56"])
    assert load_config(DIGITS).model.depth == 20


# --- errors ---------------------------------------------------------------------------------------


def test_missing_config_file_is_a_config_error_naming_the_path(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(ConfigError) as error:
        load_config(f"{missing}:depth=3")
    assert_one_line_config_error(error, missing)


@pytest.mark.parametrize(
    "override, key",
    [
        ("--config.model.dept=3", "model.dept"),
        ("--config.modle.depth=3", "modle.depth"),
        ("--config.logging.wandb.mdoe=offline", "logging.wandb.mdoe"),
        ("--config.seeed=1", "seeed"),
    ],
)
def test_unknown_override_key_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, [override])
    assert_one_line_config_error(error, repr(key))


def test_unknown_nested_key_lists_the_valid_keys_of_its_parent():
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, ["--config.model.dept=3"])
    assert_one_line_config_error(error, "depth", "width")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.model.depth=abc", "model.depth"),
        ("--config.model.depth=3.5", "model.depth"),
        ("--config.optimizer.learning_rate=fast", "optimizer.learning_rate"),
        ("--config.data.standardize=maybe", "data.standardize"),
        ("--config.early_stopping.patience=soon", "early_stopping.patience"),
    ],
)
def test_wrong_override_type_is_a_config_error_naming_the_field(override, needle):
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, [override])
    assert_one_line_config_error(error, needle)


@pytest.mark.parametrize(
    "file_arg, needle",
    [
        ("dept=3", "'dept'"),
        ("depth=three", "depth"),
        ("depth", "'depth'"),
    ],
)
def test_bad_file_arg_is_a_config_error_naming_the_argument(file_arg, needle):
    with pytest.raises(ConfigError) as error:
        load_config(f"{DIGITS}:{file_arg}")
    assert_one_line_config_error(error, needle)


@pytest.mark.parametrize("override", ["model.depth=3", "--model.depth=3", "-config.model.depth=3"])
def test_override_without_config_prefix_is_a_config_error(override):
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, [override])
    assert_one_line_config_error(error, override)


def test_override_without_value_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, ["--config.model.depth"])
    assert_one_line_config_error(error, "config.model.depth")


def test_overriding_a_plain_none_field_points_to_placeholder(tmp_path):
    path = write_config_file(
        tmp_path,
        "plain_none.py",
        """
        import ml_collections

        def get_config():
            config = ml_collections.ConfigDict()
            config.clip = None
            return config
        """,
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, ["--config.clip=1.0"])
    assert_one_line_config_error(error, "placeholder")


def test_wrong_override_type_message_keeps_the_flag_and_parser_wording():
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, ["--config.model.depth=deep"])
    assert str(error.value) == (
        "flag --config.model.depth=deep: invalid literal for int() with base 10: 'deep'"
    )


def test_unknown_key_message_lists_the_valid_keys():
    with pytest.raises(ConfigError) as error:
        load_config(DIGITS, ["--config.optimizer.lr=0.1"])
    message = str(error.value)
    assert message.startswith("unknown config key 'optimizer.lr' (valid keys of optimizer: [")
    assert "'learning_rate'" in message and "'momentum'" in message


def _collections_file(directory: Path) -> str:
    return write_config_file(
        directory,
        "collections.py",
        """
        import ml_collections
        from ml_collections import config_dict

        def get_config():
            config = ml_collections.ConfigDict()
            config.sizes = (1, 2)
            config.names = ["a", "b"]
            config.maybe = config_dict.placeholder(tuple)
            config.plain_none = None
            return config
        """,
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["--config.sizes=(3, 4, 5)"], (3, 4, 5)),
        (["--config.sizes=[3, 4]"], (3, 4)),
        (["--config.sizes=7"], (7,)),
        (["--config.sizes=3", "--config.sizes=4"], (3, 4)),  # repeated flag builds a tuple
        (["--config.data.split_fractions=(0.8, 0.1, 0.1)"], None),
    ],
)
def test_tuple_overrides(tmp_path, overrides, expected):
    if expected is None:
        config = load_config(DIGITS, overrides)
        assert config.data.split_fractions == (0.8, 0.1, 0.1)
    else:
        assert load_config(_collections_file(tmp_path), overrides).sizes == expected


def test_list_fields_are_not_overridable_and_the_error_says_use_a_tuple(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_collections_file(tmp_path), ["--config.names=['c']"])
    assert_one_line_config_error(error, "config.names", "not supported for overriding", "tuple")


def test_overriding_a_plain_none_field_names_config_dict_placeholder(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_collections_file(tmp_path), ["--config.plain_none=1"])
    assert_one_line_config_error(error, "config.plain_none", "config_dict.placeholder")


def test_later_override_of_the_same_key_wins():
    config = load_config(DIGITS, ["--config.model.depth=32", "--config.model.depth=44"])
    assert config.model.depth == 44


def test_bool_override_without_value_sets_true():
    config = load_config(DIGITS, ["--config.checkpoint.async_save=false"])
    assert config.checkpoint.async_save is False
    assert load_config(DIGITS, ["--config.checkpoint.async_save"]).checkpoint.async_save is True


def test_get_config_runs_once_per_load(tmp_path):
    counter = tmp_path / "calls.txt"
    path = write_config_file(
        tmp_path,
        "counting.py",
        f"""
        import ml_collections

        def get_config():
            with open({str(counter)!r}, "a") as handle:
                handle.write("x")
            return ml_collections.ConfigDict({{"depth": 1}})
        """,
    )
    assert load_config(path, ["--config.depth=2"]).depth == 2
    assert counter.read_text() == "x"


@pytest.mark.parametrize(
    "body",
    [
        "def get_config(arg=None):\n    return {'lr': 0.1}\n",
        "def get_config(arg=None):\n    return None\n",
    ],
    ids=["dict", "none"],
)
def test_get_config_not_returning_a_config_dict_is_a_config_error(tmp_path, body):
    path = write_config_file(tmp_path, "not_config_dict.py", body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, path, "ConfigDict")


def test_config_error_is_the_user_error_of_jaxdl_errors():
    assert ConfigError is errors.ConfigError
    assert issubclass(ConfigError, errors.UserError)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "body, exception, needle",
    [
        ("def get_config(arg=None):\n    return 1 / 0\n", ZeroDivisionError, "division"),
        ("def get_config(arg=None):\n    return undefined_name\n", NameError, "undefined_name"),
        ("def get_config(arg=None):\n    raise RuntimeError('boom')\n", RuntimeError, "boom"),
        (
            "def get_config(arg=None):\n    raise ValueError('lr must be positive')\n",
            ValueError,
            "lr must be positive",
        ),
        ("def get_config(arg=None):\n    return len(3)\n", TypeError, "len()"),
        ("import not_a_module_jaxdl_test\n", ModuleNotFoundError, "not_a_module_jaxdl_test"),
        ("X = 1 / 0\ndef get_config():\n    return None\n", ZeroDivisionError, "division"),
    ],
    ids=[
        "zero_division",
        "name_error",
        "runtime_error",
        "value_error",
        "type_error",
        "import_error",
        "module_level",
    ],
)
def test_bug_in_the_config_file_propagates_unchanged(tmp_path, body, exception, needle):
    """Not wrapped in a ConfigError: the CLI shows the bug's traceback, pointing into the file."""
    path = write_config_file(tmp_path, "buggy.py", body)
    with pytest.raises(exception, match=needle) as error:
        load_config(path)
    assert not isinstance(error.value, ConfigError)
    assert any(entry.path == Path(path) for entry in error.traceback), "traceback loses the file"


def test_zero_division_in_get_config_is_not_a_config_error(tmp_path):
    path = write_config_file(
        tmp_path,
        "divides.py",
        """
        import ml_collections

        def get_config(arg=None):
            config = ml_collections.ConfigDict()
            config.lr = 1 / 0
            return config
        """,
    )
    with pytest.raises(ZeroDivisionError):
        load_config(path)


def test_parse_config_arg_error_inside_get_config_is_a_config_error(tmp_path):
    path = write_config_file(
        tmp_path,
        "with_arg.py",
        """
        import ml_collections
        from jaxdl.config import parse_config_arg

        def get_config(arg=None):
            args = parse_config_arg(arg, depth=20)
            return ml_collections.ConfigDict({"depth": args.depth})
        """,
    )
    with pytest.raises(ConfigError) as error:
        load_config(f"{path}:width=3")
    assert_one_line_config_error(error, "'width'", "depth")
    assert load_config(f"{path}:depth=7").depth == 7


def test_user_error_raised_by_the_file_propagates_as_is(tmp_path):
    path = write_config_file(
        tmp_path,
        "user_error.py",
        """
        from jaxdl.errors import DataError

        def get_config(arg=None):
            raise DataError("no such dataset: imagenet-42")
        """,
    )
    with pytest.raises(errors.DataError, match="imagenet-42"):
        load_config(path)


@pytest.mark.parametrize(
    "body, line",
    [
        ("def get_config(arg=None)\n    return None\n", 1),
        ("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict(\n", 4),
        ("def get_config():\nreturn None\n", 2),
    ],
    ids=["missing_colon", "unclosed_paren", "indentation"],
)
def test_syntax_error_is_a_config_error_with_file_and_line(tmp_path, body, line):
    path = write_config_file(tmp_path, "syntax.py", body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, f"{path}:{line}:", "syntax error")


@pytest.mark.parametrize(
    "body",
    [
        "LEARNING_RATE = 0.1\n",
        "get_config = {'lr': 0.1}\n",
    ],
    ids=["absent", "not_callable"],
)
def test_file_without_get_config_is_a_config_error(tmp_path, body):
    path = write_config_file(tmp_path, "no_get_config.py", body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, path, "get_config")


def test_file_without_get_config_is_an_error_even_after_loading_another(tmp_path):
    load_config(DIGITS)
    path = write_config_file(tmp_path, "no_get_config.py", "LEARNING_RATE = 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, "get_config")


def _config_file_returning(directory: Path, name: str, value: int) -> str:
    return write_config_file(
        directory,
        name,
        f"""
        import ml_collections

        VALUE = {value}

        def get_config():
            return ml_collections.ConfigDict({{"value": VALUE, "file": __file__}})
        """,
    )


def test_two_config_files_loaded_one_after_the_other_return_their_own_configs(tmp_path):
    first = _config_file_returning(tmp_path, "first.py", 1)
    (tmp_path / "other").mkdir()
    second = _config_file_returning(tmp_path / "other", "first.py", 2)  # same module file name
    assert load_config(first).to_dict() == {"value": 1, "file": first}
    assert load_config(second).to_dict() == {"value": 2, "file": second}
    assert load_config(first).value == 1
    assert "first" not in sys.modules  # not registered under a name another file could share


def test_config_file_without_py_suffix_loads(tmp_path):
    path = _config_file_returning(tmp_path, "experiment.cfg", 5)
    assert load_config(path).value == 5


def test_an_edited_config_file_is_reloaded(tmp_path):
    path = _config_file_returning(tmp_path, "edited.py", 1)
    assert load_config(path).value == 1
    _config_file_returning(tmp_path, "edited.py", 2)
    assert load_config(path).value == 2


# --- get_config signatures ------------------------------------------------------------------------


def _signature_file(directory: Path, signature: str) -> str:
    return write_config_file(
        directory,
        "signature.py",
        f"""
        import ml_collections

        def get_config({signature}):
            return ml_collections.ConfigDict({{"arg": repr(locals().get("arg"))}})
        """,
    )


@pytest.mark.parametrize(
    "signature, config_suffix, expected",
    [
        ("", "", "None"),
        ("arg=None", "", "None"),
        ("arg='default'", "", "'default'"),  # no ':arg': the default applies
        ("arg", "", "None"),  # a required argument gets None when no ':arg' is given
        ("arg=None", ":depth=3", "'depth=3'"),
        ("arg", ":depth=3", "'depth=3'"),
        ("arg=None", ":", "''"),
        ("*args", "", "None"),
    ],
)
def test_get_config_is_called_with_the_file_arg(tmp_path, signature, config_suffix, expected):
    path = _signature_file(tmp_path, signature)
    assert load_config(path + config_suffix).arg == expected


def test_arg_given_to_a_get_config_taking_none_is_a_config_error(tmp_path):
    path = _signature_file(tmp_path, "")
    with pytest.raises(ConfigError) as error:
        load_config(f"{path}:depth=3")
    assert_one_line_config_error(error, path, "get_config()", "'depth=3'")


def test_get_config_needing_two_arguments_is_a_config_error(tmp_path):
    path = _signature_file(tmp_path, "arg, other")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, path, "get_config(arg, other)")


def test_type_error_inside_get_config_is_not_mistaken_for_a_bad_signature(tmp_path):
    path = write_config_file(
        tmp_path, "type_bug.py", "def get_config(arg=None):\n    return 'depth' + 3\n"
    )
    with pytest.raises(TypeError, match="str"):
        load_config(f"{path}:depth=3")


def test_loaded_config_is_locked():
    config = load_config(DIGITS)
    with pytest.raises(AttributeError):
        config.new_field = 1
    config.model.depth = 56  # existing fields stay writable


# --- save / read ----------------------------------------------------------------------------------


def test_save_then_read_config_round_trips_values(tmp_path):
    config = load_config(
        f"{DIGITS}:depth=32",
        ["--config.optimizer.clip_global_norm=1.0", "--config.logging.wandb.mode=offline"],
    )
    path = tmp_path / "config.json"
    save_config(config, path)
    restored = read_config(path)
    assert isinstance(restored, ml_collections.ConfigDict)
    # JSON turns tuples into lists; everything else must come back identical.
    assert restored.to_dict() == json.loads(config.to_json_best_effort())
    assert restored.model.depth == 32
    assert restored.optimizer.clip_global_norm == 1.0
    assert restored.early_stopping.patience is None
    assert restored.data.standardize is True
    assert list(restored.data.split_fractions) == [0.7, 0.15, 0.15]


def test_saved_config_is_readable_json(tmp_path):
    path = tmp_path / "config.json"
    save_config(load_config(DIGITS), path)
    assert json.loads(path.read_text())["model"]["depth"] == 20


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"model": {"depth": 20', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
    ids=["truncated", "empty", "list", "binary"],
)
def test_read_config_of_a_corrupt_file_is_a_config_error_naming_it(tmp_path, content, needle):
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        read_config(path)
    assert_one_line_config_error(error, str(path), needle)


def test_read_config_of_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "config.json"
    with pytest.raises(ConfigError) as error:
        read_config(missing)
    assert_one_line_config_error(error, str(missing))


# --- parse_config_arg -----------------------------------------------------------------------------


def test_parse_config_arg_converts_to_the_default_types():
    parsed = parse_config_arg(
        " depth = 18 ,width=2.5,flag=false,name=wide,extra=1",
        depth=20,
        width=1.0,
        flag=True,
        name="narrow",
        extra=None,
    )
    assert parsed.depth == 18 and type(parsed.depth) is int
    assert parsed.width == 2.5 and type(parsed.width) is float
    assert parsed.flag is False
    assert parsed.name == "wide"
    assert parsed.extra == "1"  # a None default keeps the raw text


@pytest.mark.parametrize("arg", [None, ""])
def test_parse_config_arg_empty_gives_the_defaults(arg):
    parsed = parse_config_arg(arg, depth=20, flag=False)
    assert parsed.to_dict() == {"depth": 20, "flag": False}


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("no", False)])
def test_parse_config_arg_bool_spellings(text, expected):
    assert parse_config_arg(f"flag={text}", flag=not expected).flag is expected


def test_parse_config_arg_float_accepts_int_text_int_rejects_float_text():
    assert parse_config_arg("lr=1", lr=0.1).lr == 1.0
    with pytest.raises(ConfigError, match="depth"):
        parse_config_arg("depth=1.5", depth=20)


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("dept=3", "dept"),
        ("depth", "depth"),
        ("flag=maybe", "flag"),
        ("depth=x", "depth"),
    ],
)
def test_parse_config_arg_errors_name_the_argument(arg, needle):
    with pytest.raises(ConfigError, match=needle) as error:
        parse_config_arg(arg, depth=20, flag=False)
    assert "\n" not in str(error.value)


# --- config_diff ----------------------------------------------------------------------------------


def test_config_diff_of_equal_configs_is_empty():
    config = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    assert config_diff(config, config) == {}


def test_config_diff_reports_changed_leaves_by_dotted_path():
    old = {"model": {"depth": 20, "width": 16}, "seed": 0, "logging": {"wandb": {"mode": "x"}}}
    new = {"model": {"depth": 32, "width": 16}, "seed": 1, "logging": {"wandb": {"mode": "y"}}}
    assert config_diff(old, new) == {
        "logging.wandb.mode": ("x", "y"),
        "model.depth": (20, 32),
        "seed": (0, 1),
    }
    assert list(config_diff(old, new)) == ["logging.wandb.mode", "model.depth", "seed"]


def test_config_diff_reports_added_and_removed_keys_with_missing():
    old = {"model": {"depth": 20, "dropout": 0.1}, "gone": {"x": 1}}
    new = {"model": {"depth": 20, "norm": "batch"}, "fresh": {"y": 2}}
    assert config_diff(old, new) == {
        "fresh.y": (MISSING, 2),
        "gone.x": (1, MISSING),
        "model.dropout": (0.1, MISSING),
        "model.norm": (MISSING, "batch"),
    }
    assert repr(MISSING) == "<missing>"


def test_config_diff_a_none_value_differs_from_a_missing_key():
    assert config_diff({"a": None}, {}) == {"a": (None, MISSING)}
    assert config_diff({"a": None}, {"a": None}) == {}


def test_config_diff_ignores_tuple_versus_list():
    old = {"data": {"split_fractions": (0.7, 0.15, 0.15)}, "shape": ((1, 2), (3,))}
    new = {"data": {"split_fractions": [0.7, 0.15, 0.15]}, "shape": [[1, 2], [3]]}
    assert config_diff(old, new) == {}
    assert config_diff(old, {**new, "shape": [[1, 2], [4]]}) == {
        "shape": ([[1, 2], [3]], [[1, 2], [4]])
    }


def test_config_diff_compares_values_and_types_as_json():
    assert config_diff({"a": 1}, {"a": 1.0}) == {"a": (1, 1.0)}
    assert config_diff({"a": 1}, {"a": True}) == {"a": (1, True)}
    assert config_diff({"a": float("nan")}, {"a": float("nan")}) == {}


def test_config_diff_dict_versus_value_is_one_entry():
    assert config_diff({"a": {"b": 1}}, {"a": 3}) == {"a": ({"b": 1}, 3)}
    assert config_diff({"a": {}}, {"a": {"b": 1}}) == {"a.b": (MISSING, 1)}
    assert config_diff({}, {"a": {"b": {"c": 1}}}) == {"a.b.c": (MISSING, 1)}
    assert config_diff({"a": {}}, {}) == {"a": ({}, MISSING)}  # an empty sub-dict is a leaf


def test_config_diff_of_a_loaded_config_against_its_saved_json_is_empty(tmp_path):
    config = load_config(f"{DIGITS}:depth=32", ["--config.optimizer.clip_global_norm=1.0"])
    path = tmp_path / "config.json"
    save_config(config, path)
    saved = read_config(path).to_dict()
    assert config_diff(saved, config.to_dict()) == {}
    assert config_diff(saved, config) == {}  # ConfigDicts are accepted too
    changed = load_config(f"{DIGITS}:depth=32", ["--config.train.num_epochs=5"])
    assert config_diff(saved, changed.to_dict()) == {
        "optimizer.clip_global_norm": (1.0, None),
        "train.num_epochs": (30, 5),
    }
