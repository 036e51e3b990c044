"""Tests for jaxdl.parallel mesh building and logical-axis sharding rules on 8 CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxdl.parallel import (
    MESH_AXES,
    batch_sharding,
    logical_to_shardings,
    make_mesh,
    mesh_from_config,
    mesh_sizes_from_config,
    resolve_axis_sizes,
)

NUM_DEVICES = 8


@pytest.fixture(autouse=True, scope="module")
def require_eight_devices():
    if jax.device_count() != NUM_DEVICES:
        pytest.fail(f"conftest should expose {NUM_DEVICES} CPU devices, got {jax.device_count()}")


def sizes(**nondefault: int) -> dict[str, int]:
    """Full axis-size dict: every mesh axis 1 except those given."""
    return {axis: nondefault.get(axis, 1) for axis in MESH_AXES}


class TinyModel(nn.Module):
    """A dense kernel, a stem conv with 3 input channels, and an unannotated bias."""

    @nn.compact
    def __call__(self, x):  # x: (batch, 16)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            (16, 32),
        )
        self.param(
            "stem",
            nn.with_logical_partitioning(
                nn.initializers.lecun_normal(),
                ("conv_height", "conv_width", "conv_in", "conv_out"),
            ),
            (3, 3, 3, 16),
        )
        bias = self.param("bias", nn.initializers.zeros, (32,))
        return x @ kernel + bias


def abstract_variables():
    return jax.eval_shape(TinyModel().init, jax.random.key(0), jnp.ones((2, 16)))


# --- resolve_axis_sizes ---------------------------------------------------------------------------


def test_resolve_fills_the_minus_one_axis_with_the_remaining_devices():
    assert resolve_axis_sizes({"data": -1, "tensor": 2}, 8) == sizes(data=4, tensor=2)
    assert resolve_axis_sizes({"fsdp": -1}, 8) == sizes(fsdp=8)
    assert resolve_axis_sizes({"data": 2, "fsdp": 2, "tensor": 2}, 8) == sizes(
        data=2, fsdp=2, tensor=2
    )


def test_resolve_returns_every_axis_in_mesh_order():
    assert list(resolve_axis_sizes({"tensor": -1}, 8)) == list(MESH_AXES)


@pytest.mark.parametrize(
    "axis_sizes, needle",
    [
        ({"model": 2, "data": -1}, "model"),
        ({"data": -1, "fsdp": -1}, "-1"),
        ({"data": 0, "fsdp": -1}, "positive"),
        ({"data": -2}, "positive"),
        ({"data": 3, "fsdp": -1}, "cannot be split"),
        ({"data": 4}, "8"),
        ({"data": 4, "tensor": 4}, "16"),
    ],
)
def test_resolve_rejects_bad_sizes_with_a_named_problem(axis_sizes, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_axis_sizes(axis_sizes, 8)


# --- mesh_sizes_from_config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mesh_config, expected",
    [
        ({"strategy": "dp", "data": -1}, sizes(data=8)),
        ({"strategy": "fsdp", "data": -1}, sizes(fsdp=8)),
        ({"strategy": "tp", "data": -1}, sizes(tensor=8)),
        ({"strategy": "fsdp_tp", "data": -1, "tensor": 4}, sizes(fsdp=2, tensor=4)),
        ({"strategy": "dp_tp", "data": -1, "tensor": 2}, sizes(data=4, tensor=2)),
        (
            {"strategy": "custom", "data": 2, "fsdp": -1, "tensor": 2},
            sizes(data=2, fsdp=2, tensor=2),
        ),
        ({"data": -1, "sequence": 2}, sizes(data=4, sequence=2)),  # no strategy means custom
    ],
)
def test_each_strategy_gives_its_axis_sizes_on_eight_devices(mesh_config, expected):
    assert mesh_sizes_from_config(mesh_config, NUM_DEVICES) == expected


@pytest.mark.parametrize("strategy", ["dp_tp", "fsdp_tp"])
@pytest.mark.parametrize("tensor", [1, 0])
def test_combined_strategies_need_a_tensor_size_above_one(strategy, tensor):
    with pytest.raises(ValueError, match="tensor"):
        mesh_sizes_from_config({"strategy": strategy, "tensor": tensor}, NUM_DEVICES)


def test_fsdp_tp_with_a_tensor_size_not_dividing_the_devices_is_an_error():
    with pytest.raises(ValueError, match="cannot be split"):
        mesh_sizes_from_config({"strategy": "fsdp_tp", "tensor": 3}, NUM_DEVICES)


def test_unknown_strategy_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match="zero3") as error:
        mesh_sizes_from_config({"strategy": "zero3"}, NUM_DEVICES)
    assert "fsdp_tp" in str(error.value)


# --- make_mesh / mesh_from_config -----------------------------------------------------------------


def test_make_mesh_has_fixed_axis_names_and_the_requested_shape():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == sizes(fsdp=2, tensor=4)
    assert mesh.devices.shape == (1, 2, 1, 4)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_over_a_device_subset_uses_only_those_devices():
    subset = jax.devices()[:4]
    mesh = make_mesh({"data": -1}, subset)
    assert dict(mesh.shape) == sizes(data=4)
    assert {d.id for d in mesh.devices.flat} == {d.id for d in subset}


def test_make_mesh_rejects_sizes_that_do_not_use_every_device():
    with pytest.raises(ValueError, match="devices"):
        make_mesh({"data": 3})


def test_mesh_from_config_follows_the_strategy():
    mesh = mesh_from_config({"strategy": "fsdp_tp", "tensor": 4})
    assert dict(mesh.shape) == sizes(fsdp=2, tensor=4)


# --- logical_to_shardings / batch_sharding --------------------------------------------------------


def test_dense_kernel_is_sharded_fsdp_by_tensor_on_a_2x4_mesh():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    shardings = logical_to_shardings(abstract_variables(), mesh)["params"]
    kernel = shardings["kernel"]
    assert isinstance(kernel, NamedSharding)
    assert kernel.mesh == mesh
    assert kernel.spec == PartitionSpec("fsdp", "tensor")
    assert kernel.shard_shape((16, 32)) == (8, 8)


def test_unannotated_parameters_are_replicated():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    bias = logical_to_shardings(abstract_variables(), mesh)["params"]["bias"]
    assert bias.is_fully_replicated


def test_dimension_not_divisible_by_its_mesh_axis_is_replicated_not_an_error():
    mesh = make_mesh({"fsdp": 8})
    shardings = logical_to_shardings(abstract_variables(), mesh)["params"]
    stem = shardings["stem"]
    assert stem.spec[2] is None  # 3 input channels cannot be split 8 ways
    assert stem.shard_shape((3, 3, 3, 16)) == (3, 3, 3, 16)
    assert shardings["kernel"].shard_shape((16, 32)) == (2, 32)  # 16 embed rows split over fsdp 8


def test_shardings_are_usable_to_initialize_parameters_under_jit():
    mesh = make_mesh({"fsdp": 8})
    shardings = logical_to_shardings(abstract_variables(), mesh)
    init = jax.jit(
        lambda key: nn.meta.unbox(TinyModel().init(key, jnp.ones((2, 16)))),
        out_shardings=shardings,
    )
    params = init(jax.random.key(0))["params"]
    assert params["kernel"].sharding.shard_shape((16, 32)) == (2, 32)
    assert params["stem"].shape == (3, 3, 3, 16)


def test_batch_sharding_splits_the_leading_axis_over_data_and_fsdp():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharding = batch_sharding(mesh)
    assert sharding.spec == PartitionSpec(("data", "fsdp"))
    assert sharding.shard_shape((16, 8, 8, 1)) == (4, 8, 8, 1)
    batch = jax.device_put(np.zeros((16, 8, 8, 1), np.float32), sharding)
    # Devices differing only in the tensor coordinate hold the same rows: 4 distinct shards.
    rows = {(shard.index[0].start, shard.index[0].stop) for shard in batch.addressable_shards}
    assert rows == {(0, 4), (4, 8), (8, 12), (12, 16)}


@pytest.mark.parametrize(
    ("settings", "ignored"),
    [
        ({"strategy": "dp", "data": 3}, "mesh.data=3"),
        ({"strategy": "fsdp", "tensor": 2}, "mesh.tensor=2"),
        ({"strategy": "dp_tp", "tensor": 2, "data": 4}, "mesh.data=4"),
    ],
)
def test_sizes_a_strategy_preset_overrides_are_errors_not_ignored(settings, ignored):
    config = {"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1, **settings}
    with pytest.raises(ValueError, match=f"{ignored} has no effect"):
        mesh_sizes_from_config(config, 8)
    # The defaults (1 and -1) never count as settings.
    assert mesh_sizes_from_config({**config, **{ignored[5:].split("=")[0]: 1}}, 8)
