"""jaxdl.explain against independent references: torch autograd on the same small models,
hand-written integrated gradients and Grad-CAM, a numpy softmax(QK^T/sqrt(d)) from the layer's
parameters, and a linear model whose adversarial accuracy is known in closed form."""

import functools
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import image as mpimg

from jaxdl.data.records import DataSplits
from jaxdl.explain import (
    adversarial_accuracy,
    attention_maps,
    attention_maps_by_layer,
    classifier,
    default_layer,
    explain_experiment,
    feature_map_layers,
    fgsm,
    gradcam,
    integrated_gradients,
    pgd,
    plot_attention,
    plot_attribution,
    robustness_experiment,
    robustness_table,
    smoothgrad,
    vanilla_gradient,
)
from jaxdl.layers.attention import ATTENTION_WEIGHTS
from jaxdl.models.cnn import LeNet5
from jaxdl.models.resnet import ResNet
from jaxdl.models.transformer import TransformerClassifier
from jaxdl.tasks.classification import ImageClassification, SequenceClassification

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TinyCNN(nn.Module):
    """conv 3x3 -> tanh -> conv 3x3 -> tanh -> mean pool -> dense: smooth, so integrated
    gradients converge at the trapezoid rule's rate."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = jnp.tanh(nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x))
        x = jnp.tanh(nn.Conv(5, (3, 3), padding="SAME", name="conv2")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class Linear(nn.Module):
    """Flatten + dense: input gradients are columns of the kernel."""

    classes: int = 3

    @nn.compact
    def __call__(self, x, *, train: bool):
        return nn.Dense(self.classes, name="head")(x.reshape(x.shape[0], -1))


def _torch_tiny_cnn(params):
    """The TinyCNN forward in float64 torch with the flax weights, plus one returning the
    conv2 activations as well (for Grad-CAM)."""
    t = {
        name: {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in layer.items()}
        for name, layer in params.items()
    }

    def conv(x, layer):  # flax HWIO kernels, NHWC inputs
        kernel = t[layer]["kernel"].permute(3, 2, 0, 1)
        return F.conv2d(x, kernel, t[layer]["bias"], padding=1)

    def with_activations(images):
        x = images.permute(0, 3, 1, 2)
        a = conv(torch.tanh(conv(x, "conv1")), "conv2")
        pooled = torch.tanh(a).mean(dim=(2, 3))
        return pooled @ t["head"]["kernel"] + t["head"]["bias"], a

    return lambda images: with_activations(images)[0], with_activations


def _init(model, *inputs, seed=0, **kwargs):
    """Random variables for ``model`` without running its init (traced for shapes only, filled
    by numpy: eager flax init compiles op by op, which dominates a CPU test's time). Batch-norm
    variances are 1, means 0."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, train=False, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "'mean'" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return (0.4 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes))


@pytest.fixture(scope="module")
def tiny():
    model = TinyCNN()
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 2)).astype(np.float32)
    variables = _init(model, x)
    forward, with_activations = _torch_tiny_cnn(variables["params"])
    return classifier(model, variables), x, forward, with_activations


def _torch_input_grad(forward, x, targets):
    images = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    forward(images)[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    return images.grad.numpy()


def test_vanilla_gradient_equals_torch_autograd(tiny):
    model, x, forward, _ = tiny
    targets = np.array([0, 2, 1])
    np.testing.assert_allclose(
        vanilla_gradient(model, x, targets), _torch_input_grad(forward, x, targets), atol=1e-5
    )
    predicted = forward(torch.tensor(x, dtype=torch.float64)).argmax(-1).numpy()
    np.testing.assert_allclose(
        vanilla_gradient(model, x), _torch_input_grad(forward, x, predicted), atol=1e-5
    )


def test_smoothgrad_is_exact_for_linear_models_and_seeded(tiny):
    model = Linear()
    x = np.random.default_rng(2).normal(size=(4, 3, 3, 2)).astype(np.float32)
    variables = _init(model, x)
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    targets = np.array([0, 1, 2, 1])
    grads = smoothgrad(classifier(model, variables), x, targets, samples=5, noise=0.3)
    np.testing.assert_allclose(grads, kernel[:, targets].T.reshape(x.shape), atol=1e-5)

    cnn, images, _, _ = tiny
    noiseless = smoothgrad(cnn, images, samples=4, noise=0.0)
    np.testing.assert_allclose(noiseless, vanilla_gradient(cnn, images), atol=1e-6)
    first, again = (smoothgrad(cnn, images, samples=4, seed=7) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, smoothgrad(cnn, images, samples=4, seed=8))


def _torch_integrated_gradients(forward, x, targets, steps):
    """Trapezoid-rule IG from a zero baseline, written out in float64 torch."""
    total = np.zeros(x.shape)
    for k in range(steps + 1):
        weight = (0.5 if k in (0, steps) else 1.0) / steps
        total += weight * _torch_input_grad(forward, x * k / steps, targets)
    return x * total


def test_integrated_gradients_complete_and_match_reference(tiny):
    model, x, forward, _ = tiny
    targets = np.array([1, 0, 2])
    reference = _torch_integrated_gradients(forward, x.astype(np.float64), targets, 8)
    np.testing.assert_allclose(
        integrated_gradients(model, x, targets, steps=8), reference, atol=1e-5
    )
    logits = forward(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    base = forward(torch.zeros(x.shape, dtype=torch.float64)).detach().numpy()
    difference = (logits - base)[np.arange(3), targets]
    gaps = [
        np.abs(
            np.asarray(integrated_gradients(model, x, targets, steps=s)).sum((1, 2, 3)) - difference
        ).max()
        for s in (2, 8, 32)
    ]
    # The trapezoid rule's error falls ~16x per 4x steps; float32 sums set a floor near 1e-6.
    assert gaps[1] < gaps[0] / 4 and gaps[2] < gaps[1] / 4
    assert gaps[2] < 2e-3 * np.abs(difference).max()
    # A non-zero baseline: completeness relative to f(baseline).
    baseline = np.full(x.shape, 0.3, np.float32)
    attributions = integrated_gradients(model, x, targets, baseline=baseline, steps=32)
    shifted = forward(torch.tensor(baseline, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(
        np.asarray(attributions).sum((1, 2, 3)),
        (logits - shifted)[np.arange(3), targets],
        atol=2e-3,
    )


def test_gradcam_equals_hand_torch_implementation(tiny):
    model, x, _, with_activations = tiny
    assert feature_map_layers(model, x) == ["conv1", "conv2"]
    assert default_layer(model, x) == "conv2"
    targets = np.array([2, 0, 1])
    images = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits, activations = with_activations(images)
    activations.retain_grad()
    logits[torch.arange(3), torch.as_tensor(targets)].sum().backward()
    alphas = activations.grad.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((alphas * activations).sum(1)).detach().numpy()
    np.testing.assert_allclose(gradcam(model, x, targets), expected, atol=1e-5)
    grads_conv1 = gradcam(model, x, targets, layer="conv1")
    assert grads_conv1.shape == (3, 6, 6) and np.all(np.asarray(grads_conv1) >= 0)
    with pytest.raises(ValueError, match="not called"):
        gradcam(model, x, layer="nope")


def test_gradcam_default_layers_of_library_cnns():
    images = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
    resnet = ResNet(depth=8, num_classes=4, width=4)
    assert default_layer(classifier(resnet, _init(resnet, images)), images) == "stage3_block1"
    lenet = LeNet5(5)
    clf = classifier(lenet, _init(lenet, images))
    assert default_layer(clf, images) == "conv2"
    maps = np.asarray(gradcam(clf, images))
    assert maps.shape == (2, 8, 8) and np.isfinite(maps).all()


def _tiny_transformer(**overrides):
    settings = dict(
        vocab_size=20, num_classes=3, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=16, max_len=6
    )
    return TransformerClassifier(**{**settings, **overrides})


def test_attention_maps_match_manual_softmax_and_leave_the_model_alone():
    model = _tiny_transformer()  # scanned layers
    tokens = jnp.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    mask = tokens != 0
    variables = _init(model, tokens)
    maps = np.asarray(attention_maps(model, variables, tokens, padding_mask=mask))
    assert maps.shape == (2, 2, 2, 6, 6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-6)
    assert np.all(maps[:, 0, :, :, 3:] == 0.0)  # padded keys of the first sequence

    # Outputs and parameters are unchanged: init never sows, apply returns the same logits.
    unrolled = model.clone(scan_layers=False)
    init = functools.partial(unrolled.init, jax.random.key(0), tokens, train=False)
    assert set(jax.eval_shape(init)) == {"params"}
    by_layer = attention_maps_by_layer(model, variables, tokens, padding_mask=mask)
    assert list(by_layer) == [f"encoder/layers_{i}/attention" for i in range(2)]
    plain = jax.jit(functools.partial(model.apply, train=False))(variables, tokens, mask)
    unroll_params = {
        f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], variables["params"]["encoder"]["layers"])
        for i in range(2)
    }
    params = dict(variables["params"])
    params["encoder"] = {**unroll_params, "final_norm": params["encoder"]["final_norm"]}
    capture = functools.partial(
        unrolled.apply,
        train=False,
        mutable=[ATTENTION_WEIGHTS],
        capture_intermediates=lambda module, method: module.name == "attn_norm",
    )
    sown, state = jax.jit(capture)({"params": params}, tokens, mask)
    np.testing.assert_allclose(sown, plain, atol=1e-6)

    # softmax(QK^T / sqrt(d)) in numpy from each layer's query/key parameters and its input.
    for i in range(2):
        layer = params["encoder"][f"layers_{i}"]["attention"]
        x = np.asarray(state["intermediates"]["encoder"][f"layers_{i}"]["attn_norm"]["__call__"][0])
        q = np.einsum("bte,end->btnd", x, layer["query"]["kernel"]) + layer["query"]["bias"]
        k = np.einsum("bte,end->btnd", x, layer["key"]["kernel"]) + layer["key"]["bias"]
        logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
        logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(maps[i], expected, atol=1e-5)


def _separable_linear():
    """A 2-class linear model on 4 features with logits x @ [[-w], [w]]^T: example n is
    classified correctly under any L-inf attack of radius eps iff its margin
    |2 x.w| > eps * 2 ||w||_1 (no clipping)."""
    w = np.array([1.0, -2.0, 0.5, 1.5], np.float32)
    kernel = np.stack([-w, w], axis=1).reshape(4, 2)
    variables = {"params": {"head": {"kernel": kernel, "bias": np.zeros(2, np.float32)}}}
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(size=(64, 1, 2, 2)), -1.5, 1.5).astype(np.float32)
    labels = (x.reshape(64, 4) @ w > 0).astype(np.int32)
    return classifier(Linear(classes=2), variables), x, labels, w


def test_fgsm_is_the_signed_loss_gradient_step_and_raises_the_loss(tiny):
    model, x, forward, _ = tiny
    labels = np.array([0, 1, 2])
    images = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(forward(images), torch.as_tensor(labels), reduction="sum").backward()
    expected = np.clip(x + 0.1 * np.sign(images.grad.numpy()), -1.0, 1.2)
    attacked = fgsm(model, x, labels, 0.1, clip_min=-1.0, clip_max=1.2)
    np.testing.assert_allclose(attacked, expected, atol=1e-6)

    def losses(inputs):
        logits = forward(torch.tensor(np.asarray(inputs), dtype=torch.float64))
        return F.cross_entropy(logits, torch.as_tensor(labels), reduction="none").detach().numpy()

    assert np.all(losses(fgsm(model, x, labels, 0.05)) > losses(x))


def test_pgd_stays_in_the_ball_and_matches_the_closed_form_robust_accuracy():
    model, x, labels, w = _separable_linear()
    eps = 0.2
    box = {"clip_min": -2.0, "clip_max": 2.0}  # holds x and every attack below
    attacked = np.asarray(pgd(model, x[:32], labels[:32], eps, seed=3, **box))
    assert np.abs(attacked - x[:32]).max() <= eps + 1e-6
    assert not np.allclose(attacked, x[:32])
    margins = np.abs(x.reshape(64, 4) @ w)
    epsilons = [0.0, 0.05, 0.2, 0.5]
    expected = {e: float(np.mean(margins > e * np.abs(w).sum())) for e in epsilons}
    for attack, options in (("pgd", {"seed": 1}), ("fgsm", {})):
        accuracy = adversarial_accuracy(
            model, x, labels, epsilons, attack=attack, batch_size=32, **box, **options
        )
        assert accuracy == pytest.approx(expected, abs=1 / 64 + 1e-9)
    assert expected[0.0] == 1.0 and expected[0.5] < expected[0.05] < 1.0
    attacked = np.asarray(pgd(model, x[:32], labels[:32], 1.0, seed=3, clip_min=-0.5, clip_max=0.5))
    assert attacked.min() >= -0.5 and attacked.max() <= 0.5
    # Per-channel radii: scale multiplies epsilon.
    scaled = adversarial_accuracy(
        model, x, labels, [0.1], attack="fgsm", scale=np.full((1, 2, 2), 2.0), batch_size=32, **box
    )
    assert scaled == pytest.approx({0.1: expected_at(margins, w, 0.2)}, abs=1 / 64 + 1e-9)


def expected_at(margins, w, eps):
    """The closed-form accuracy of ``_separable_linear`` under an L-inf attack of radius eps."""
    return float(np.mean(margins > eps * np.abs(w).sum()))


def _png_shape(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    return mpimg.imread(path).shape


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    shape = _png_shape(
        plot_attribution(
            rng.normal(size=(8, 8, 3)), rng.normal(size=(8, 8)), tmp_path / "a.png", title="t"
        )
    )
    assert shape[0] > 100 and shape[2] in (3, 4)
    _png_shape(
        plot_attribution(rng.normal(size=(8, 8, 1)), rng.normal(size=(8, 8, 1)), tmp_path / "g.png")
    )
    weights = rng.dirichlet(np.ones(4), size=(3, 4))
    _png_shape(plot_attention(list("abcd"), weights, tmp_path / "att.png", titles=["x", "y", "z"]))
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(list("abc"), weights, tmp_path / "bad.png")


def _experiment(task, model, records, variables, info):
    data = DataSplits(train=records, val=records, test=records, info=info)
    state = types.SimpleNamespace(params=variables["params"], batch_stats=None)
    return types.SimpleNamespace(task=task, model=model, data=data), state


def test_explain_and_robustness_entry_points(tmp_path, tiny):
    model, x, _, _ = tiny
    records = [{"inputs": image, "labels": np.int32(i % 3)} for i, image in enumerate(x)]
    task = ImageClassification(input_shape=(6, 6, 2), num_classes=3)
    experiment, state = _experiment(
        task, TinyCNN(), records, model.variables, {"class_names": ["a", "b", "c"]}
    )
    for method in ("saliency", "integrated_gradients", "gradcam"):
        out = tmp_path / method
        report = explain_experiment(experiment, state, method=method, out_dir=str(out), count=2)
        assert json.loads((out / "explanations.json").read_text()) == report
        assert [e["png"] for e in report["examples"]] == [
            f"test_000{i}_{method}.png" for i in (0, 1)
        ]
        assert all(_png_shape(out / e["png"]) for e in report["examples"])
    assert report["layer"] == "conv2"

    text_model = _tiny_transformer()
    tokens = [np.array([3, 4, 5]), np.array([1, 2, 3, 4, 5, 6])]
    variables = _init(text_model, jnp.ones((1, 6), jnp.int32))
    text_records = [{"tokens": t, "labels": np.int32(0)} for t in tokens]
    text, text_state = _experiment(
        SequenceClassification(max_len=6, num_classes=3), text_model, text_records, variables, {}
    )
    report = explain_experiment(text, text_state, method="attention", out_dir=str(tmp_path / "att"))
    assert report["layers"] == ["encoder/layers_0/attention", "encoder/layers_1/attention"]
    saved = np.load(tmp_path / "att" / "attention_test.npz")["weights"]
    assert saved.shape == (2, 2, 2, 6, 6)

    linear, lx, labels, _ = _separable_linear()
    records = [{"inputs": image, "labels": label} for image, label in zip(lx, labels, strict=True)]
    experiment, state = _experiment(
        ImageClassification(input_shape=(1, 2, 2), num_classes=2),
        Linear(classes=2),
        records,
        linear.variables,
        {},
    )
    out = tmp_path / "robustness.json"
    report = robustness_experiment(experiment, state, epsilons=[0.01, 0.1], steps=5, out=str(out))
    assert json.loads(out.read_text()) == report
    assert report["clean_accuracy"] == 1.0 and report["examples"] == 64
    assert report["rows"][1]["pgd"] <= report["rows"][0]["pgd"] <= 1.0
    assert "| 0.1 |" in robustness_table(report)
