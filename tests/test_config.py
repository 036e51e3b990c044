"""Tests for jaxdl.config: loading experiment files, overrides, one-line ConfigErrors, save/read."""

import json
import textwrap
from pathlib import Path

import ml_collections
import pytest

from jaxdl.config import ConfigError, load_config, parse_config_arg, read_config, save_config

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


def test_get_config_raising_value_error_is_a_config_error(tmp_path):
    path = write_config_file(
        tmp_path,
        "raises_value.py",
        "def get_config(arg=None):\n    raise ValueError('learning rate must be positive')\n",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, "learning rate must be positive")


@pytest.mark.parametrize(
    "body",
    [
        "def get_config(arg=None):\n    raise RuntimeError('boom')\n",
        "def get_config(arg=None):\n    return 1 / 0\n",
        "def get_config(arg=None):\n    return undefined_name\n",
        "def get_config(arg=None)\n    return None\n",
        "import not_a_module_jaxdl_test\n",
    ],
    ids=["runtime_error", "zero_division", "name_error", "syntax_error", "import_error"],
)
def test_any_exception_from_the_config_file_is_a_config_error(tmp_path, body):
    path = write_config_file(tmp_path, "broken.py", body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error)


def test_file_without_get_config_is_an_error_even_after_loading_another(tmp_path):
    load_config(DIGITS)
    path = write_config_file(tmp_path, "no_get_config.py", "LEARNING_RATE = 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert_one_line_config_error(error, "get_config")


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
