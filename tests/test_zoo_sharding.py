"""The vision zoo under every sharding strategy trains exactly like one device: one small model
of each family (AlexNet, MobileNet, DenseNet, EfficientNet, U-Net), 2 steps of batch 8, under data
parallelism (dp8) and FSDP x tensor parallelism (fsdp2_tp4; DenseNet under that one only).

The strategies, the train step and the comparison are ``test_train_sharding``'s. Dropout and
stochastic depth are off (their draws are covered there); batch-norm statistics are global-batch
statistics under every strategy. SGD, not Adam: SGD keeps the reduction-order noise of any
exactly-zero gradient at noise size, where Adam normalises it to full-size updates (see
``test_train_sharding``'s transformer). The running statistics are compared with the parameters.

All slow (``make test-slow``): CI's suite is near its time budget, and even the cheapest case
(U-Net, depth 1, 8x8) compiles for 15 s or more on a busy 2-core machine, far above the 3 s a
default-suite test may take.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.models import get_model
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.tasks.segmentation import SemanticSegmentation
from jaxdl.train import sharded_state_initializer
from tests.helpers import assert_same_training
from tests.test_train_sharding import STRATEGIES, _step

BATCH, NUM_STEPS = 8, 2


class ZooCase(NamedTuple):
    model: dict[str, Any]
    image: tuple[int, int, int]  # H, W, C
    segmentation_classes: int = 0  # > 0: per-pixel labels and the segmentation task
    learning_rate: float = 0.05
    strategies: tuple[str, ...] = ("dp8", "fsdp2_tp4")  # data parallel; FSDP x tensor parallel


CASES = {
    # The smallest input AlexNet takes (63x63: 11x11/4 conv and three 3x3/2 pools); its convs
    # have fixed widths, so only the classifier is shrunk.
    "alexnet": ZooCase(
        dict(name="alexnet", num_classes=10, hidden=32, dropout_rate=0.0), (63, 63, 3)
    ),
    # Depthwise convs (feature_group_count = channels), squeeze-and-excite, hard swish.
    "mobilenet_v3_small": ZooCase(
        dict(name="mobilenet_v3_small", num_classes=10, width_mult=0.25, dropout_rate=0.0),
        (32, 32, 3),
    ),
    # DenseNet and EfficientNet end in batch norms over 1x1 maps of 8 samples, which amplify
    # reduction-order noise: at learning rate 0.05 two steps on ONE device with conv_impl 'auto'
    # vs 'plain' already differ by 3e-4. A small step keeps the comparison about the gradients
    # (a missing or doubled reduction still moves parameters by far more than the tolerance).
    # DenseNet-121 compiles for minutes on 2 cores: FSDP x TP only.
    "densenet121": ZooCase(
        dict(name="densenet121", num_classes=10, growth_rate=4, bn_size=2, num_init_features=8),
        (32, 32, 3),
        learning_rate=1e-3,
        strategies=("fsdp2_tp4",),
    ),
    # B0 has no width knob; 32x32 keeps its maps at 16x16 down to 1x1.
    "efficientnet_b0": ZooCase(
        dict(name="efficientnet_b0", num_classes=10, dropout_rate=0.0, stochastic_depth_rate=0.0),
        (32, 32, 3),
        learning_rate=1e-3,
    ),
    "unet": ZooCase(
        dict(name="unet", num_classes=3, width=4, depth=1),
        (8, 8, 3),
        segmentation_classes=3,
    ),
}


def _batches(case: ZooCase) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    label_shape = (BATCH, *case.image[:2]) if case.segmentation_classes else (BATCH,)
    classes = case.segmentation_classes or case.model["num_classes"]
    return [
        {
            "inputs": rng.normal(size=(BATCH, *case.image)).astype(np.float32),
            "labels": rng.integers(0, classes, size=label_shape).astype(np.int32),
        }
        for _ in range(NUM_STEPS)
    ]


def _run(name: str, sizes: dict[str, int], devices, batches):
    """``NUM_STEPS`` train steps of case ``name`` on a ``sizes`` mesh: (state, losses)."""
    case = CASES[name]
    model = get_model(**case.model)
    task = (
        SemanticSegmentation(case.image, case.segmentation_classes)
        if case.segmentation_classes
        else None
    )
    mesh = make_mesh(sizes, devices)
    if task is None:

        def init_inputs():
            return (jnp.zeros((BATCH, *case.image), jnp.float32),), {}
    else:

        def init_inputs():
            return task.init_inputs(BATCH)

    _, shardings, initialize = sharded_state_initializer(
        model, optax.sgd(case.learning_rate), init_inputs, mesh
    )
    state = initialize(jax.random.PRNGKey(0))
    sharding = batch_sharding(mesh)
    step = _step(task, mesh, shardings, "auto")
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def zoo_reference_runs():
    """``case -> (batches, (state, losses) on one device)``, built on first use."""

    @functools.cache
    def reference(name):
        batches = _batches(CASES[name])
        return batches, _run(name, {"data": 1}, jax.devices()[:1], batches)

    return reference


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy,name",
    [pytest.param(s, n, id=f"{s}-{n}") for n, case in CASES.items() for s in case.strategies],
)
def test_zoo_training_matches_single_device(zoo_reference_runs, strategy, name):
    batches, (ref_state, ref_losses) = zoo_reference_runs(name)
    state, losses = _run(name, STRATEGIES[strategy], jax.devices(), batches)
    # Batch-norm running statistics are state too: they must match as well as the parameters.
    assert_same_training(
        losses,
        ref_losses,
        {"params": state.params, "batch_stats": state.batch_stats},
        {"params": ref_state.params, "batch_stats": ref_state.batch_stats},
    )
