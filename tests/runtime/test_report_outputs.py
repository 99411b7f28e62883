"""edgeq validate compares every graph output, not only the first: a model whose second output
is wrong fails on that output (named in the report), and the search names its node. The Python
API ``edgeq.validate`` against a torch module does the same."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import edgeq
from edgeq.cli import main
from edgeq.errors import EdgeqError, RuntimeExecError
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
    broken = _two_outputs(out / "broken.onnx", "Div")
    return {"good": _two_outputs(out / "good.onnx", "Mul"), "broken": broken, "dir": out,
            "broken_so": edgeq.compile(broken, target="cpu", out_dir=out).path}


def test_every_output_is_compared(models):
    x = [np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)]
    report = validate_model(models["broken"], [models["broken_so"]], x, reference=models["good"])
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


class PlusOneTimesTwo(torch.nn.Module):
    """The torch reference of the two-output graph: (x + 1, 2x)."""

    def forward(self, x):
        return x + 1, x * 2


class PlusOneOnly(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_python_api_compares_every_output(models):
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    ort, tvm = edgeq.validate(PlusOneTimesTwo(), [models["good"], models["broken_so"]], [x])
    assert (ort.executor, ort.artifact, tvm.executor, tvm.artifact) == ("onnxruntime", models["good"], "tvm", str(models["broken_so"]))
    assert [n.output for n in ort.outputs] == [n.output for n in tvm.outputs] == ["y1", "y2"]
    # Adds and doublings are exact in float32 on every executor: zero error, cosine 1.
    for n in [*ort.outputs, tvm.outputs[0]]:
        assert (n.max_abs, n.mismatches, n.elements) == (0.0, 0, 32), n
        assert n.cosine == pytest.approx(1.0, abs=1e-12), n
    assert ort.ok and ort.max_abs == 0.0 and ort.output == "y1"  # first output's figures read directly
    # The compiled copy divides by two where the reference doubles: |2x - x/2| = 0.75 max|2x|.
    wrong = tvm.outputs[1]
    assert wrong.max_rel == pytest.approx(0.75, rel=1e-6), wrong
    assert wrong.max_abs == pytest.approx(1.5 * np.abs(x).max(), rel=1e-6), wrong
    assert wrong.mismatches == 32
    assert not tvm.ok and tvm.max_abs == 0.0  # the first output alone would have passed


def test_python_api_reference_with_fewer_outputs_names_the_artifact(models):
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(EdgeqError, match=r"broken\.cpu\.so gives 2 outputs \(y1, y2\); the reference \(torch\) gives 1"):
        edgeq.validate(PlusOneOnly(), [models["broken_so"]], [x])
    with pytest.raises(EdgeqError, match=r"good\.onnx gives 2 outputs"):
        edgeq.validate(PlusOneOnly(), [models["good"]], [x])
