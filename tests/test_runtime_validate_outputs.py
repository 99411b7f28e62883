"""edgeq validate compares every graph output, not only the first: a model whose second output
is wrong fails on that output (named in the report), and the search names its node."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgeq
from edgeq.cli import main
from edgeq.errors import RuntimeExecError
from edgeq.runtime.report import validate_model


def _two_outputs(path, second_op: str) -> str:
    """y1 = x + 1, y2 = x ``second_op`` 2 (Mul in the original, Div in the broken copy)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("y1", "y2")]
    nodes = [helper.make_node("Add", ["x", "one"], ["y1"], name="plus_one"),
             helper.make_node(second_op, ["x", "two"], ["y2"], name="times_two")]
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])]
    model = helper.make_model(helper.make_graph(nodes, "two_outputs", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    return {"good": _two_outputs(out / "good.onnx", "Mul"), "broken": _two_outputs(out / "broken.onnx", "Div"), "dir": out}


def test_every_output_is_compared(models):
    x = [np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)]
    artifact = edgeq.compile(models["broken"], target="cpu", out_dir=models["dir"])
    report = validate_model(models["broken"], [artifact.path], x, reference=models["good"])
    assert [r.numerics.executor for r in report.results] == ["onnxruntime", "tvm"]
    for result in report.results:
        first, second = result.outputs
        assert (first.output, second.output) == ("y1", "y2")
        assert first.max_abs == 0.0  # the first output alone would pass
        assert second.max_rel > 0.5  # x/2 against 2x: 0.75 of the scale
        assert not result.ok
        assert (result.divergence.node, result.divergence.op_type) == ("times_two", "Div")
    assert "tvm [y2]" in report.table() and "onnxruntime [y1]" in report.table()


def test_cli_json_lists_every_output(models, capsys):
    code = main(["validate", models["good"], "--reference", models["good"], "--dim", "batch=3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    (result,) = report["results"]
    assert [n["output"] for n in result["outputs"]] == ["y1", "y2"]
    assert all(n["max_abs"] == 0.0 for n in result["outputs"])


def test_reference_with_fewer_outputs_is_an_error(models, tmp_path):
    one = onnx.load(models["good"])
    one.graph.output.pop()
    path = tmp_path / "one_output.onnx"
    onnx.save(one, path)
    with pytest.raises(RuntimeExecError, match=r"gives 1 outputs; .*has 2 \(y1, y2\)"):
        validate_model(models["good"], [], [np.zeros((1, 8), np.float32)], reference=str(path))
