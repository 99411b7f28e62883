"""What a fresh machine (no cross compilers, no device) reports: the model's own faults first."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import edgeq
from edgeq.errors import CompileError, TargetError


def _unlowerable_model(path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="acme", name="mystery")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("acme", 1)]), path)
    return path


@pytest.mark.parametrize("target", ["arm64", "armv7"])
def test_missing_lowering_is_reported_before_the_missing_cross_compiler(tmp_path, monkeypatch, target):
    """With no compiler on PATH, an op without a lowering is still the error (not the linker)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    path = _unlowerable_model(tmp_path / "bad.onnx")
    with pytest.raises(CompileError, match=rf"node 'mystery': op acme\.Frobnicate has no lowering for target '{target}'"):
        edgeq.compile(path, target=target, out_dir=tmp_path)
    assert not list(tmp_path.glob("bad.*.*"))


def test_a_lowerable_model_then_names_the_missing_cross_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(TargetError, match=r"aarch64-linux-gnu-g\+\+, which is not installed \(Debian package g\+\+-aarch64-linux-gnu\)"):
        edgeq.compile(path, target="arm64", out_dir=tmp_path)
    assert not list(tmp_path.glob("relu.arm64*"))
