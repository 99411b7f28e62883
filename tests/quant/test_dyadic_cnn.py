"""The built-in CNN, integer-only (HAWQ-V3): the PyTorch integer reference, onnxruntime and TVM
(host CPU) give IDENTICAL outputs on the whole digits test set (0 mismatches), the integerized
graph has no float op between its input QuantizeLinear and output DequantizeLinear, and the
accuracy stays within 0.5 points of float32 (W8A8) and 3 points (W4A8).

Outputs are compared as the float values of the output DequantizeLinear with exact equality:
y = (q - z) * s is one-to-one in q, so equal floats mean equal integers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import edgeq
from edgeq.models.digits_cnn import accuracy
from edgeq.passes.integer_check import float_ops_in_integer_region
from edgeq.passes.integerize import export_integer
from edgeq.runtime import OrtExecutor, TvmExecutor


@pytest.fixture(scope="module")
def dyadic_w8(tmp_path_factory, digits, digits_model):
    out = tmp_path_factory.mktemp("dyadic")
    qmodel = edgeq.quantize(digits_model, "w8a8-dyadic", calib=digits.x_train[:512])
    qdq_path = edgeq.export(qmodel.qdq_module(), digits.x_test[:1], out / "digits_qdq.onnx")
    int_path = export_integer(qmodel, digits.x_test[:1], out / "digits_int.onnx")
    return qmodel, qdq_path, int_path, out


def test_integer_region_has_no_float_op(dyadic_w8):
    _, qdq_path, int_path, _ = dyadic_w8
    before = float_ops_in_integer_region(onnx.load(str(qdq_path)))
    assert {"Conv", "Gemm", "Add", "AveragePool"} <= {n.op_type for n in before}
    model = onnx.load(str(int_path))
    assert float_ops_in_integer_region(model) == []
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvInteger") == 5 and ops.count("MatMulInteger") == 1  # 4 convs + pool; head
    assert ops[0] == "QuantizeLinear" and ops[-1] == "DequantizeLinear"
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    onnx.checker.check_model(model, full_check=True)


def test_onnxruntime_is_bit_exact_with_pytorch_integer_reference(digits, dyadic_w8):
    qmodel, _, int_path, _ = dyadic_w8
    x = digits.x_test.numpy()
    ref = qmodel(digits.x_test).numpy()
    got = OrtExecutor(int_path).run([x])[0]
    assert got.shape == (len(x), 10)
    assert int((got != ref).sum()) == 0


@pytest.mark.slow
def test_tvm_is_bit_exact_and_integer_inside(digits, dyadic_w8):
    from edgeq.targets.importer import import_onnx

    qmodel, _, int_path, out = dyadic_w8
    script = import_onnx(onnx.load(str(int_path))).script()
    float_bindings = [l for l in script.splitlines() if "= R." in l and 'dtype="float' in l.split("= R.")[0]]
    assert len(float_bindings) == 1 and "R.dequantize" in float_bindings[0], float_bindings
    artifact = edgeq.compile(int_path, target="cpu", out_dir=out)
    x = digits.x_test.numpy()
    got = TvmExecutor(artifact.path).run([x])[0]
    ref = qmodel(digits.x_test).numpy()
    assert int((got != ref).sum()) == 0


def test_w8a8_accuracy_within_half_a_point(digits, digits_model, dyadic_w8):
    qmodel = dyadic_w8[0]
    with torch.no_grad():
        float_acc = accuracy(digits_model(digits.x_test), digits.y_test)
        int_acc = accuracy(qmodel(digits.x_test), digits.y_test)
    assert int_acc >= float_acc - 0.005


def test_w4a8_accuracy_and_bit_exact(tmp_path, digits, digits_model):
    qmodel = edgeq.quantize(digits_model, "w4a8-dyadic", calib=digits.x_train[:512])
    layer_bits = [m.qdq.bits for m in qmodel.integer.modules() if hasattr(m, "qdq")]
    assert layer_bits == [4] * 5
    assert all(int(m.qdq.weight_int8.abs().max()) <= 7 for m in qmodel.integer.modules() if hasattr(m, "qdq"))
    with torch.no_grad():
        float_acc = accuracy(digits_model(digits.x_test), digits.y_test)
        int_acc = accuracy(qmodel(digits.x_test), digits.y_test)
    assert int_acc >= float_acc - 0.03
    path = export_integer(qmodel, digits.x_test[:1], tmp_path / "w4.onnx")
    got = OrtExecutor(path).run([digits.x_test.numpy()])[0]
    assert int((got != qmodel(digits.x_test).numpy()).sum()) == 0


def test_mixed_precision_bit_map(digits, digits_model):
    recipe = edgeq.recipes.resolve_recipe('{"method": "dyadic", "weight_bits": 4, "layer_bits": [["stem.*", 8], ["head", 8]]}')
    qmodel = edgeq.quantize(digits_model, recipe, calib=digits.x_train[:256])
    bits = {m.qdq.bits for m in qmodel.integer.modules() if hasattr(m, "qdq")}
    per_layer = [int(m.qdq.weight_int8.abs().max()) for m in qmodel.integer.modules() if hasattr(m, "qdq")]
    assert bits == {4, 8}
    assert per_layer[0] > 7 and per_layer[-1] > 7 and max(per_layer[1:-1]) <= 7


def test_integer_forward_gives_the_output_integers(digits, dyadic_w8):
    qmodel = dyadic_w8[0]
    q = qmodel.integer_forward(digits.x_test[:64])
    assert q.dtype == torch.int64 and int(q.min()) >= 0 and int(q.max()) <= 255
    qp = qmodel.output_qparams
    np.testing.assert_array_equal(((q - qp.zero_point).float() * qp.scale).numpy(), qmodel(digits.x_test[:64]).numpy())


def test_inspect_integer_only(dyadic_w8, capsys):
    from edgeq.cli import main

    _, qdq_path, int_path, _ = dyadic_w8
    assert main(["inspect", str(int_path), "--integer-only"]) == 0
    assert "integer-only: yes" in capsys.readouterr().out
    assert main(["inspect", str(qdq_path), "--integer-only"]) == 1
    out = capsys.readouterr().out
    assert "integer-only: no" in out and "Conv" in out and "Gemm" in out
