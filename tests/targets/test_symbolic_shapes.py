"""The importer keeps the sequence length symbolic through the shape arithmetic torch's dynamo
export writes (Shape → Squeeze → Add → Reshape to slice a table, Range to the length, Expand by a
constant shape): before, TVM's stock importer rejects the graph; after, one module whose outputs
are typed by ``seq`` (no fresh length variable) runs at any length and equals onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets.importer import import_onnx, prepare

TABLE = 64


def _model() -> onnx.ModelProto:
    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    inits = [ints("zero", 0), ints("one", 1), ints("axis0", [0]), ints("flat", [-1]), ints("start", [0]),
             ints("axis1", [1]), ints("ones", [1, 1]),
             numpy_helper.from_array(np.arange(TABLE, dtype=np.float32)[None] * 0.5, "table")]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], start=1, end=2),
        helper.make_node("Squeeze", ["shape"], ["seq"]),
        helper.make_node("Add", ["seq", "one"], ["seq_plus_one"]),
        helper.make_node("Reshape", ["seq_plus_one", "flat"], ["end"]),
        helper.make_node("Slice", ["table", "start", "end", "axis1"], ["y_table"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_f", "axis0"], ["row"]),
        helper.make_node("Expand", ["row", "ones"], ["expanded"]),
        helper.make_node("Add", ["x", "expanded"], ["y_positions"]),
    ]
    graph = helper.make_graph(nodes, "shape_arithmetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq"])],
                              [helper.make_tensor_value_info("y_positions", TensorProto.FLOAT, [1, "seq"]),
                               helper.make_tensor_value_info("y_table", TensorProto.FLOAT, [1, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_stock_importer_rejects_the_shape_arithmetic():
    from tvm.relax.frontend.onnx import from_onnx

    with pytest.raises(Exception, match="Reshape expects the input data to be a Tensor"):
        from_onnx(prepare(_model()))


def test_outputs_are_typed_by_the_sequence_variable():
    main = import_onnx(_model())["main"]
    script = main.script()
    assert "R.Tensor((1, seq), dtype=\"float32\")" in script and "1 + seq" in script.replace("seq + 1", "1 + seq")
    assert "range_len" not in script  # Range reuses seq instead of a fresh length variable


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("symbolic_shapes")
    path = out / "shape_arithmetic.onnx"
    onnx.save(_model(), path)
    return path, edgeq.compile(path, target="cpu", out_dir=out)


@pytest.mark.parametrize("seq", [1, 3, 40])
def test_one_artifact_runs_every_length(compiled, seq):
    path, art = compiled
    x = np.random.default_rng(seq).standard_normal((1, seq)).astype(np.float32)
    expect = ort_session(path).run(None, {"x": x})
    got = TvmExecutor(art.path).run([x])
    assert [g.shape for g in got] == [(1, seq), (1, seq + 1)]
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(g, e)  # additions of exact small values: bit for bit
