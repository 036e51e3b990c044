"""TF SavedModel (jax2tf) and TFLite exports of the CNNs/ResNets, reloaded without the model's
code, agree with JAX for several batch sizes (slow: `make test-slow` installs the `tf` extra);
without TensorFlow, asking for them is a one-line error."""

import functools
import importlib.util
import sys

import jax
import numpy as np
import pytest

from jaxdl.errors import UserError
from jaxdl.export import TOLERANCE, export_model, inference_function, load_exported
from jaxdl.models import get_model
from jaxdl.tasks.classification import ImageClassification

FAMILIES = {
    "resnet": {"depth": 8, "width": 8, "stem": "cifar"},
    # 'SAME' 2x2 max-pools on odd sizes (12 -> 6 -> 3 -> 2 -> 1): asymmetric padding.
    "vgg": {"depth": 11, "width_multiplier": 0.0625, "hidden": 16},
    "lenet5": {},  # the classic CNN: 5x5 convs, average pools
}
tensorflow_installed = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed (tf extra)"
)


@functools.cache  # one init per family, shared by both formats
def _inference(family):
    task = ImageClassification(input_shape=(12, 12, 3), num_classes=5)
    model = get_model(family, num_classes=5, **FAMILIES[family])
    args, kwargs = task.init_inputs(2)
    variables = jax.jit(lambda key: model.init(key, *args, train=False, **kwargs))(
        jax.random.key(0)
    )
    return inference_function(task, model, variables)


def _images(rng, batch):
    return {"inputs": rng.normal(size=(batch, 12, 12, 3)).astype(np.float32)}


@pytest.mark.slow  # `make test-slow` installs the tf extra; 10-60 s per case
@tensorflow_installed
@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tf_export_reloads_without_model_code_and_matches_jax_at_any_batch_size(
    tmp_path, family, fmt
):
    inference = _inference(family)
    out = tmp_path / "export"
    meta = export_model(inference, fmt, str(out), _images(np.random.default_rng(0), 2), {})
    assert meta["format"] == fmt and "tensorflow" in " ".join(meta["versions"])
    assert max(meta["verified"]["max_abs_error"].values()) <= TOLERANCE
    run = load_exported(str(out))
    rng = np.random.default_rng(1)
    for batch in (1, 5, 3):  # one graph, a dynamic batch dimension (verified at 2 on export)
        inputs = _images(rng, batch)
        expected, got = inference(inputs), run(inputs)
        assert set(got) == set(expected) == {"logits", "probabilities"}
        for name, want in expected.items():
            assert got[name].shape == want.shape
            np.testing.assert_allclose(got[name], want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_without_tensorflow_a_tf_export_is_a_one_line_error(tmp_path, monkeypatch, fmt):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    sample = _images(np.random.default_rng(0), 2)
    with pytest.raises(UserError) as error:
        export_model(_inference("lenet5"), fmt, str(tmp_path / "e"), sample, {})
    assert str(error.value) == (
        f"{fmt} export needs the tf extra: make export-tf-deps (pip install -e '.[tf]')"
    )
    assert not (tmp_path / "e").exists()
