"""The ONNX file an export keeps is self-contained: jax2onnx writes weights of 1 MB or more to a
``.data`` file beside it; the export's rewrite puts them inline and removes that file (it used to
stay behind, unused, and counted in the export's size)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jaxdl.export.formats import _drop_stale_shapes


def test_rewriting_an_onnx_file_inlines_its_external_weights_and_removes_the_data_file(tmp_path):
    weight = np.random.default_rng(0).normal(size=(512, 640)).astype(np.float32)  # 1.25 MiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 640])],
        initializer=[numpy_helper.from_array(weight, "w")],
        value_info=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [512, 640])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    _drop_stale_shapes(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    model = onnx.load(str(path))
    assert not model.graph.value_info
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)
