"""separate_output_names: torch's exporter can write an output's name twice; the inner writer is
renamed (with its readers), the result computes the same as the single-assignment reference, and
a graph that already has single assignment is left byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.errors import PassError
from edgeq.export_passes.separate_output_names import separate_output_names
from edgeq.pass_manager import seeded_inputs
from edgeq.passes import run_passes
from _passes_testing import model_from_text, op_types, run


def _written_twice() -> onnx.ModelProto:
    """linear = Relu(x); linear = Neg(linear): the shape torch writes for an output named like an inner value."""
    nodes = [helper.make_node("Relu", ["x"], ["linear"], name="relu"), helper.make_node("Neg", ["linear"], ["linear"], name="neg")]
    value = helper.make_tensor_value_info("linear", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])], [value],
                              value_info=[value])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_inner_writer_is_renamed_and_the_outputs_are_the_reference():
    model = _written_twice()
    assert separate_output_names(model) == 1
    assert [list(n.output) for n in model.graph.node] == [["linear.inner"], ["linear"]]
    assert list(model.graph.node[1].input) == ["linear.inner"] and not model.graph.value_info
    feeds = seeded_inputs(model)
    np.testing.assert_array_equal(run(model, feeds)[0], -np.maximum(feeds["x"], 0))


def test_the_manager_takes_the_repair_first_only():
    out, _ = run_passes(_written_twice(), ["separate_output_names", "dead_nodes"])
    assert op_types(out) == ["Relu", "Neg"]
    with pytest.raises(PassError, match="value 'linear' is written by two nodes"):
        run_passes(_written_twice(), ["dead_nodes"])


def test_single_assignment_graph_is_unchanged():
    model = model_from_text("""
g (float[N, 4] x) => (float[N, 4] y) {
    h = Relu (x)
    y = Neg (h)
}
""")
    before = model.SerializeToString()
    assert separate_output_names(model) == 0
    assert model.SerializeToString() == before
