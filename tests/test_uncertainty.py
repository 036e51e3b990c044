"""``jaxdl uncertainty``: MC dropout keeps batch norm in inference mode and is seeded, the ensemble
averages its members' softmaxes, the rejection curve, and one-line errors for bad inputs."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import special

from jaxdl.cli import main
from jaxdl.config import save_config
from jaxdl.export import inference_function
from jaxdl.models import get_model
from jaxdl.tasks.classification import ImageClassification
from jaxdl.uncertainty import REJECTION_FRACTIONS, dropout_rates, predict_split, uncertainty_report
from tests.helpers import tiny_digits_config

TASK = ImageClassification(input_shape=(4, 4, 1), num_classes=3)


class DropoutNet(nn.Module):
    """Dense -> batch norm -> dropout -> Dense: both layers that ``train`` switches."""

    rate: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(self.rate, deterministic=not train)(nn.relu(x))
        return nn.Dense(3)(x)


def _variables(model, seed=0):
    """Initialised variables with running statistics far from any batch's own."""
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 4, 4, 1)), train=False))
    variables = init(jax.random.key(seed))
    stats = variables["batch_stats"]["BatchNorm_0"]
    variables["batch_stats"]["BatchNorm_0"] = {
        "mean": stats["mean"] + 0.5,
        "var": stats["var"] * 3.0,
    }
    return variables


def _records(count=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 3, size=count).astype(np.int32)
    return [{"inputs": x, "labels": y} for x, y in zip(images, labels, strict=True)], images


def _softmax_of(model, variables, images):
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return special.softmax(np.asarray(logits, np.float64), -1)


def test_mc_dropout_is_seeded_and_leaves_batch_norm_in_inference_mode():
    model = DropoutNet(rate=0.5)
    variables = _variables(model)
    records, images = _records()
    inference = inference_function(TASK, model, variables)
    first = predict_split(inference, records, batch_size=4, mc_samples=5, seed=0)
    again = predict_split(inference, records, batch_size=4, mc_samples=5, seed=0)
    other_seed = predict_split(inference, records, batch_size=4, mc_samples=5, seed=1)

    assert first.samples.shape == (5, 10, 3) and first.unreadable == 0
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.allclose(first.samples, other_seed.samples)
    assert not np.allclose(first.samples[0], first.samples[1])  # fresh masks per pass
    deterministic = _softmax_of(model, variables, images)
    np.testing.assert_allclose(first.probabilities, deterministic, atol=1e-6)
    assert np.abs(first.samples - deterministic).max() > 1e-2

    # Without dropout every pass is the inference-mode prediction: batch norm kept normalising
    # with the running statistics, which differ from what training mode would use.
    plain = DropoutNet(rate=0.0)
    inference = inference_function(TASK, plain, variables)
    still = predict_split(inference, records, batch_size=4, mc_samples=3, seed=0)
    for sample in still.samples:
        np.testing.assert_allclose(sample, deterministic, atol=1e-6)
    training = jax.jit(lambda v, x: plain.apply(v, x, train=True, mutable=["batch_stats"])[0])
    training_mode = training(variables, images)
    assert np.abs(special.softmax(np.asarray(training_mode), -1) - deterministic).max() > 1e-2


def test_dropout_rates_find_the_dropout_layers_of_a_model():
    assert dropout_rates(TASK, DropoutNet(rate=0.25)) == [0.25]
    assert dropout_rates(TASK, get_model("resnet", depth=8, num_classes=3, width=4)) == [0.0]
    assert dropout_rates(TASK, get_model("lenet5", num_classes=3, padding="SAME")) == []


def test_the_ensemble_mean_is_the_average_of_the_members_softmaxes():
    model = DropoutNet(rate=0.5)
    records, images = _records(count=12)
    labels = np.asarray([r["labels"] for r in records])
    members = [_variables(model, seed) for seed in (1, 2)]
    member_probs = np.stack(
        [
            predict_split(inference_function(TASK, model, v), records, batch_size=5).probabilities
            for v in members
        ]
    )
    hand = np.mean([_softmax_of(model, v, images) for v in members], axis=0)
    np.testing.assert_allclose(member_probs.mean(0), hand, atol=1e-6)

    report = uncertainty_report(member_probs, labels, {"first": member_probs[0]})
    assert report["accuracy"] == pytest.approx(np.mean(hand.argmax(-1) == labels))
    nll = -np.mean(np.log(hand[np.arange(12), labels]))
    assert report["nll"] == pytest.approx(nll, rel=1e-5)
    entropy = -np.sum(hand * np.log(hand), -1)
    assert report["mean_entropy"] == pytest.approx(entropy.mean(), rel=1e-5)
    each = [-np.sum(p * np.log(p), -1) for p in member_probs]
    mutual = entropy - np.mean(each, axis=0)
    assert report["mean_mutual_information"] == pytest.approx(mutual.mean(), rel=1e-4)
    assert report["mean_mutual_information"] > 0
    first = np.mean(member_probs[0].argmax(-1) == labels)
    assert report["baselines"]["first"]["accuracy"] == pytest.approx(first)
    agreeing = uncertainty_report(np.stack([hand, hand]), labels)
    assert agreeing["mean_mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_the_rejection_curve_drops_the_least_certain_first():
    # 20 examples: the 6 wrong ones are the most uncertain, so accuracy rises to 1 once they go.
    rng = np.random.default_rng(0)
    sharpness = np.linspace(0.5, 8.0, 20)  # entropy falls with the index
    labels = rng.integers(0, 4, size=20)
    logits = np.zeros((20, 4))
    predicted = np.where(np.arange(20) < 6, (labels + 1) % 4, labels)
    logits[np.arange(20), predicted] = sharpness
    probs = special.softmax(logits, -1)
    curve = uncertainty_report(probs[None], labels)["rejection_curve"]

    assert curve["fractions"] == list(REJECTION_FRACTIONS)
    entropy = -np.sum(probs * np.log(probs), -1)
    order = np.argsort(-entropy, kind="stable")
    hand = []
    for fraction in REJECTION_FRACTIONS:
        kept = order[int(np.floor(fraction * 20 + 1e-9)) :]
        hand.append(np.mean(predicted[kept] == labels[kept]))
    np.testing.assert_allclose(curve["accuracy"], hand)
    assert curve["accuracy"][0] == pytest.approx(14 / 20)
    assert np.all(np.diff(curve["accuracy"]) >= 0) and curve["accuracy"][-1] == 1.0


def _workdir(path, *overrides):
    """A workdir with a saved config and a (placeholder) checkpoint: enough for the checks that
    run before any checkpoint is read."""
    (path / "checkpoints" / "1").mkdir(parents=True)
    save_config(tiny_digits_config(3, *overrides), path / "config.json")
    return str(path)


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(["uncertainty", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    one = _workdir(tmp_path / "one")
    other_data = _workdir(tmp_path / "other", "--config.data.split_seed=1")
    assert "--mc-samples N with N >= 2" in _error_line(capsys, ["--workdir", one])
    assert "N >= 2" in _error_line(capsys, ["--workdir", one, "--mc-samples", "1"])
    err = _error_line(capsys, ["--workdir", one, "--workdir", other_data])
    assert "other data" in err and "data.split_seed is 1, not 0" in err
    err = _error_line(capsys, ["--workdir", one, "--workdir", one])
    assert "given twice" in err
    err = _error_line(capsys, ["--workdir", one, "--workdir", other_data, "--mc-samples", "4"])
    assert "deep ensemble" in err
    err = _error_line(capsys, ["--workdir", one, "--mc-samples", "4"])
    assert "model resnet has no dropout" in err


def _png_ok(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(path).shape[0] > 100


@pytest.mark.slow  # trains two tiny seeds
def test_ensemble_and_mc_dropout_of_trained_runs(tmp_path, capsys):
    from jaxdl.cli import _restore_best_state, trained_workdir_config
    from jaxdl.experiment import build_experiment
    from jaxdl.export import experiment_inference
    from jaxdl.train import Trainer

    workdirs = []
    for seed in (0, 1):
        workdir = str(tmp_path / f"s{seed}")
        config = tiny_digits_config(
            3,
            f"--config.seed={seed}",
            "--config.model.dropout_rate=0.3",
            "--config.train.num_steps=24",
            "--config.schedule.warmup_epochs=0",
        )
        Trainer(build_experiment(config), workdir, quiet=True).fit()
        workdirs.append(workdir)
    capsys.readouterr()

    assert main(["uncertainty", "--workdir", workdirs[0], "--workdir", workdirs[1]]) == 0
    out = tmp_path / "s0" / "uncertainty"
    report = json.loads((out / "ensemble_test.json").read_text())
    probs, labels = [], None
    for workdir in workdirs:
        experiment = build_experiment(trained_workdir_config(workdir))
        inference = experiment_inference(experiment, _restore_best_state(experiment, workdir))
        source = experiment.data.get("test")
        labels = np.asarray([int(source[i]["labels"]) for i in range(len(source))])
        images = np.stack([source[i]["inputs"] for i in range(len(source))])
        probs.append(inference({"inputs": images})["probabilities"].astype(np.float64))
    mean = np.mean(probs, axis=0)
    assert report["members"] == 2 and report["examples"] == len(labels)
    assert report["accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == labels))
    nll = -np.mean(np.log(mean[np.arange(len(labels)), labels]))
    assert report["nll"] == pytest.approx(nll, rel=1e-4)
    for name in report["plots"]:
        _png_ok(out / name)

    argv = ["uncertainty", "--workdir", workdirs[0], "--mc-samples", "4", "--out", str(tmp_path)]
    assert main(argv) == 0
    mc = json.loads((tmp_path / "mc_dropout_test.json").read_text())
    assert mc["samples"] == 4 and mc["mean_mutual_information"] > 0
    deterministic = mc["baselines"]["deterministic"]
    assert deterministic["accuracy"] == pytest.approx(np.mean(probs[0].argmax(-1) == labels))
    assert "MC dropout, 4 samples" in capsys.readouterr().out
