"""Knowledge distillation (``jaxdl.tasks.distillation``): the loss against torch, gradients only
to the student, clear errors for unusable teachers, and (slow) a tiny teacher → student run."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxdl.cli import main
from jaxdl.config import save_config
from jaxdl.errors import ConfigError
from jaxdl.experiment import build_experiment
from jaxdl.tasks import ImageClassification, classification_loss
from jaxdl.tasks.distillation import (
    ImageDistillation,
    Teacher,
    distillation_loss,
    load_teacher,
)
from tests.helpers import tiny_digits_config

NUM_CLASSES = 5


def _torch_loss(student, teacher, labels, temperature, alpha, label_smoothing=0.0) -> float:
    s, t, y = (torch.from_numpy(np.array(a)) for a in (student, teacher, labels))
    soft = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.softmax(t / temperature, dim=-1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(s, y.long(), label_smoothing=label_smoothing)
    return float(soft * temperature**2 * alpha + (1 - alpha) * hard)


def _logits(seed: int, batch: int = 16, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    student = (rng.normal(size=(batch, NUM_CLASSES)) * scale).astype(np.float32)
    teacher = (rng.normal(size=(batch, NUM_CLASSES)) * scale).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    return student, teacher, labels


@pytest.mark.parametrize(
    ("temperature", "alpha", "label_smoothing"),
    [(1.0, 0.5, 0.0), (4.0, 0.9, 0.0), (2.0, 1.0, 0.0), (0.5, 0.3, 0.0), (4.0, 0.7, 0.1)],
)
def test_the_loss_equals_torch_kl_div_plus_cross_entropy(temperature, alpha, label_smoothing):
    student, teacher, labels = _logits(int(temperature * 10 + alpha * 100))
    ours = distillation_loss(
        student,
        teacher,
        labels,
        temperature=temperature,
        alpha=alpha,
        label_smoothing=label_smoothing,
    ).mean()
    want = _torch_loss(student, teacher, labels, temperature, alpha, label_smoothing)
    np.testing.assert_allclose(float(ours), want, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_the_classification_loss_and_equal_logits_have_no_soft_loss():
    student, teacher, labels = _logits(1)
    plain = classification_loss(student, labels, 0.1)
    zero = distillation_loss(
        student, teacher, labels, temperature=3.0, alpha=0.0, label_smoothing=0.1
    )
    np.testing.assert_allclose(np.asarray(zero), np.asarray(plain), rtol=1e-6)
    same = distillation_loss(student, student, labels, temperature=3.0, alpha=1.0)
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)


class _Linear(nn.Module):
    """A model taking ``train`` like jaxdl's, small enough to differentiate by hand."""

    features: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.features)(x)


def _task(teacher_variables, temperature=2.0, alpha=0.8) -> ImageDistillation:
    student = ImageClassification(input_shape=(3,), num_classes=NUM_CLASSES)
    teacher = Teacher(_Linear(), teacher_variables, "teacher", ml_collections.ConfigDict())
    return ImageDistillation(student, teacher, temperature=temperature, alpha=alpha)


def _linear_variables(seed: int):
    return _Linear().init(jax.random.key(seed), jnp.zeros((1, 3)))


def test_gradients_reach_the_student_only():
    inputs = jax.random.normal(jax.random.key(2), (8, 3))
    batch = {"inputs": inputs, "labels": jnp.arange(8) % NUM_CLASSES}
    student_vars, teacher_vars = _linear_variables(0), _linear_variables(1)

    def loss(student_params, teacher_params):
        task = _task({"params": teacher_params})
        forward = lambda x: _Linear().apply({"params": student_params}, x)  # noqa: E731
        return task.loss(forward, batch)[0]

    student_grads, teacher_grads = jax.grad(loss, argnums=(0, 1))(
        student_vars["params"], teacher_vars["params"]
    )
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(student_grads))
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(teacher_grads))


def test_the_task_loss_is_the_loss_function_with_the_teachers_logits():
    inputs = jax.random.normal(jax.random.key(3), (8, 3))
    labels = jnp.arange(8) % NUM_CLASSES
    student_vars, teacher_vars = _linear_variables(0), _linear_variables(1)
    task = _task(jax.tree.map(np.asarray, teacher_vars), temperature=3.0, alpha=0.6)
    forward = lambda x: _Linear().apply(student_vars, x)  # noqa: E731
    loss, aux = task.loss(forward, {"inputs": inputs, "labels": labels})
    student, teacher = forward(inputs), _Linear().apply(teacher_vars, inputs)
    want = _torch_loss(student, teacher, labels, 3.0, 0.6)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert {"accuracy", "soft_kl", "hard_loss", "teacher_agreement"} <= set(aux)


@pytest.mark.parametrize(("temperature", "alpha"), [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5)])
def test_bad_temperature_or_alpha_is_a_config_error(temperature, alpha):
    with pytest.raises(ConfigError, match="task.temperature|task.alpha"):
        _task(_linear_variables(0), temperature=temperature, alpha=alpha)


def _distill_config(teacher: str, *overrides: str) -> ml_collections.ConfigDict:
    config = tiny_digits_config(1, *overrides)
    config.unlock()
    config.task = ml_collections.ConfigDict(
        {"name": "image_distillation", "teacher_workdir": teacher, "temperature": 2.0}
    )
    return config


def _untrained_workdir(tmp_path) -> str:
    workdir = tmp_path / "untrained"
    workdir.mkdir()
    save_config(tiny_digits_config(1), workdir / "config.json")
    return str(workdir)


def _language_model_workdir(tmp_path) -> str:
    workdir = tmp_path / "lm"
    (workdir / "best" / "1").mkdir(parents=True)
    save_config(
        tiny_digits_config(1, "--config.task.name=language_modeling"), workdir / "config.json"
    )
    return str(workdir)


@pytest.mark.parametrize(
    ("make_workdir", "message"),
    [
        (lambda tmp: str(tmp / "nope"), r"task.teacher_workdir: workdir not found: .*nope"),
        (lambda tmp: str(tmp), r"task.teacher_workdir: no saved config at .*config.json"),
        (_untrained_workdir, r"task.teacher_workdir: no checkpoint in .*untrained"),
        (lambda tmp: "", r"task.teacher_workdir must name a trained jaxdl workdir"),
        (_language_model_workdir, r"lm trained task 'language_modeling'; a 'image_classification'"),
    ],
)
def test_an_unusable_teacher_workdir_is_a_config_error_naming_it(tmp_path, make_workdir, message):
    student = ImageClassification(input_shape=(8, 8, 1), num_classes=10)
    with pytest.raises(ConfigError, match=message):
        load_teacher(make_workdir(tmp_path), student, {})


def test_an_unknown_task_setting_is_refused():
    config = _distill_config("runs/whatever")
    config.task.temprature = 3.0
    with pytest.raises(ConfigError, match="unknown task setting 'temprature'"):
        build_experiment(config)


def test_the_cli_refuses_a_missing_teacher_in_one_line_and_creates_nothing(tmp_path, capsys):
    workdir = tmp_path / "student"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--config",
                f"experiments/digits_distill.py:teacher={tmp_path / 'missing'}",
                "--workdir",
                str(workdir),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"jaxdl: error: task.teacher_workdir: workdir not found: {tmp_path}/missing"
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------------
# End to end: a tiny teacher trained, then a student distilled from it through the CLI.

TINY_RUN = ("--config.train.num_steps=12", "--config.schedule.warmup_epochs=0.1")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A ResNet-8 of width 8 trained for a few steps: a real (weak) teacher workdir."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    config = ["--config", "experiments/digits_resnet.py:depth=8,epochs=1"]
    assert main(["train", *config, "--workdir", workdir, "--config.model.width=8", *TINY_RUN]) == 0
    return workdir


@pytest.mark.slow
def test_a_student_distilled_from_a_tiny_teacher_trains_and_evaluates(teacher, tmp_path):
    workdir = tmp_path / "student"
    args = ["--config", f"experiments/digits_distill.py:teacher={teacher},epochs=1"]
    assert main(["train", *args, "--workdir", str(workdir), *TINY_RUN]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["split"] == "test" and 0.0 <= results["accuracy"] <= 1.0
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in logged if row["split"] == "train"]
    assert train and all({"soft_kl", "hard_loss", "teacher_agreement"} <= set(r) for r in train)
    assert all(np.isfinite(row["loss"]) for row in train)
    assert main(["evaluate", "--workdir", str(workdir)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"depth": 14}, "does not fit its model"),
        ({"num_classes": 7}, r"params/head/bias has shape \(10,\) in the source but \(7,\)"),
    ],
)
def test_a_teacher_checkpoint_that_does_not_fit_is_a_config_error(teacher, tmp_path, edit, message):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy, ignore=shutil.ignore_patterns("tensorboard", "plots"))
    saved = json.loads((copy / "config.json").read_text())
    saved["model"].update(edit)
    (copy / "config.json").write_text(json.dumps(saved))
    student = ImageClassification(input_shape=(8, 8, 1), num_classes=10)
    with pytest.raises(ConfigError, match=f"task.teacher_workdir {copy}: .*{message}"):
        load_teacher(str(copy), student, {"num_classes": 10})
