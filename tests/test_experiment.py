"""The composition root: ``train`` and ``compile`` build one program; warm starts; errors."""

import jax
import numpy as np
import pytest

from jaxdl.config import load_config
from jaxdl.data.pipeline import make_train_loader
from jaxdl.errors import ConfigError, DataError
from jaxdl.experiment import build_experiment
from jaxdl.parallel import aot, shard_batch
from jaxdl.train import Trainer, warm_start
from jaxdl.train.compile import compile_experiment
from tests.helpers import tiny_digits_config


def _lm_config(*overrides):
    return load_config(
        "experiments/lm_pydoc.py:steps=4,layers=1,width=32,seq_len=16,batch_size=8",
        ["--config.schedule.warmup_steps=1", *overrides],
    )


def _strip_metadata(hlo: str) -> str:
    """HLO text without source locations (they name the calling frame)."""
    return "\n".join(line.split(", metadata=")[0] for line in hlo.splitlines())


@pytest.mark.parametrize("strategy", ["dp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_compile_lowers_exactly_the_step_train_runs(strategy, tmp_path):
    config = _lm_config(f"--config.mesh.strategy={strategy}")
    # What `jaxdl compile --topology cpu:8` builds ...
    compiled = build_experiment(config, devices=aot.topology_devices("cpu:8"))
    compile_hlo = compiled.lower_train_step().as_text()
    # ... and what `jaxdl train` runs, lowered on a real batch from its loader.
    trainer = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    exp = trainer.exp
    local = next(
        iter(
            make_train_loader(
                exp.data.train, batch_size=exp.global_batch_size, seed=0, spec=exp.task.batch_spec()
            )
        )
    )
    batch = shard_batch(local, exp.batch_sharding)
    train_hlo = trainer.train_step.lower(trainer.state, batch).as_text()
    assert _strip_metadata(compile_hlo) == _strip_metadata(train_hlo)
    report = compile_experiment(compiled)
    assert report.batch_shapes == {"tokens": (8, 17), "loss_mask": (8, 17)}
    assert report.num_devices == 8


def test_the_lm_experiment_fills_its_vocabulary_from_the_data():
    experiment = build_experiment(_lm_config())
    assert experiment.model.vocab_size == 256
    assert experiment.task.name == "language_modeling"
    assert experiment.task.batch_spec()["tokens"].shape == (17,)
    leaves = jax.tree.leaves(experiment.abstract_batch())
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.int32), np.dtype(np.float32)}


def test_a_task_that_does_not_fit_the_data_is_a_data_error():
    config = tiny_digits_config(1, "--config.task.name=language_modeling")
    with pytest.raises(DataError, match="needs field 'tokens'"):
        build_experiment(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.task.name=detection", "unknown task.name 'detection'"),
        ("--config.data.name=nope", "unknown data.name 'nope'"),
        ("--config.model.depth=7", "model: "),
        ("--config.schedule.name=linear", "schedule: unknown schedule name"),
        ("--config.train.batch_size=63", "multiple of the data-parallel degree"),
        ("--config.train.batch_size=5000", "exceeds the 1,257 training examples"),
        ("--config.mesh.data=3", "mesh.data=3 has no effect with mesh.strategy='dp'"),
    ],
)
def test_bad_config_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(tiny_digits_config(1, override))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrained")
    config = tiny_digits_config(
        1, "--config.train.num_steps=4", "--config.schedule.warmup_epochs=0.1"
    )
    trainer = Trainer(build_experiment(config), str(workdir), quiet=True)
    trainer.fit()
    return workdir, jax.device_get(trainer.state.params), jax.device_get(trainer.state.batch_stats)


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_a_relative_init_from_workdir_resolves_to_an_absolute_checkpoint(tmp_path, monkeypatch):
    # Orbax reads no tree metadata from a relative path (a warm start crashed with an
    # AttributeError), so the source is made absolute.
    from jaxdl.train.warm_start import resolve_source

    (tmp_path / "run" / "checkpoints" / "7" / "state").mkdir(parents=True)
    (tmp_path / "ckpt" / "state").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_source({"from_workdir": "run", "checkpoint": "latest"})
    assert resolved == str(tmp_path / "run" / "checkpoints" / "7" / "state")
    assert resolve_source({"from_checkpoint": "ckpt"}) == str(tmp_path / "ckpt" / "state")


def test_init_from_workdir_takes_the_backbone_and_reinitialises_the_head(pretrained, tmp_path):
    source, source_params, source_stats = pretrained
    overrides = (
        "--config.train.num_steps=4",
        "--config.schedule.warmup_epochs=0.1",
        f"--config.init.from_workdir={source}",
        "--config.init.checkpoint=latest",
        "--config.init.reinit=('params/head/*',)",
    )
    experiment = build_experiment(tiny_digits_config(1, *overrides))
    fresh = jax.device_get(experiment.initialize(jax.random.PRNGKey(experiment.seed)).params)
    trainer = Trainer(experiment, str(tmp_path), quiet=True)
    state, taken = warm_start(trainer.state, experiment.config.init)
    assert not [path for path in taken if path.startswith("params/head/")]
    assert any(path.startswith("batch_stats/") for path in taken)
    got, want, new = _flat(jax.device_get(state.params)), _flat(source_params), _flat(fresh)
    for key, value in got.items():
        expected = new[key] if "'head'" in key else want[key]
        np.testing.assert_array_equal(value, expected, err_msg=key)
    stats = _flat(jax.device_get(state.batch_stats))
    for key, value in _flat(source_stats).items():
        np.testing.assert_array_equal(stats[key], value, err_msg=key)
    # The optimiser starts fresh: step 0.
    assert int(state.step) == 0


def test_init_with_a_head_of_another_shape_names_the_leaf(pretrained):
    source, _, _ = pretrained
    overrides = (
        "--config.train.num_steps=4",
        "--config.schedule.warmup_epochs=0.1",
        f"--config.init.from_workdir={source}",
        "--config.model.num_classes=5",
    )
    experiment = build_experiment(tiny_digits_config(1, *overrides))
    state = experiment.initialize(jax.random.PRNGKey(0))
    with pytest.raises(
        ConfigError, match=r"params/head/bias has shape \(10,\) in the source but \(5,\) here"
    ):
        warm_start(state, experiment.config.init)


def test_missing_or_corrupt_data_files_are_data_errors(tmp_path):
    import ml_collections

    from jaxdl.data.loading import load_data

    missing = ml_collections.ConfigDict(
        {"name": "image_folder", "options": {"root": str(tmp_path / "nope")}}
    )
    with pytest.raises(DataError, match="image folder not found"):
        load_data(missing)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png")
    corrupt = ml_collections.ConfigDict(
        {"name": "image_folder", "options": {"root": str(tmp_path)}}
    )
    with pytest.raises(DataError, match="broken.png"):
        load_data(corrupt)
    wrong_option = ml_collections.ConfigDict({"name": "digits", "options": {"size": 3}})
    with pytest.raises(ConfigError, match="data.options"):
        load_data(wrong_option)


def test_parallel_models_and_data_import_nothing_from_the_layers_above():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "jaxdl"
    above = ("jaxdl.train", "jaxdl.experiment", "jaxdl.tasks", "jaxdl.cli")
    for package in ("parallel", "models", "layers", "data"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for name in names:
                    assert not name.startswith(above), f"{path} imports {name}"


def test_initialize_takes_raw_and_typed_keys_alike():
    experiment = build_experiment(tiny_digits_config(3))
    raw = experiment.initialize(jax.random.PRNGKey(3))
    typed = experiment.initialize(jax.random.key(3))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(raw), jax.device_get(typed))
