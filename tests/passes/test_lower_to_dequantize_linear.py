"""lower_to_dequantize_linear: a 4-bit LowBitLinear with its own weights becomes uint4 blocked
DequantizeLinear + MatMul with the same outputs (1e-5 of their scale); 3-bit (no standard
dtype), a weight shared by two nodes (a tied table) and ``keep_lowbit_linear`` stay packed."""

from __future__ import annotations

import onnx
import pytest

from edgeq.export_passes.lower_to_dequantize_linear import lower_to_dequantize_linear
from _passes_testing import count, lowbit_linear, verified


def test_four_bit_linear_lowers():
    model, _ = lowbit_linear(bits=4)
    out, change = verified(model, "lower_to_dequantize_linear")
    assert (count(out, "LowBitLinear"), count(out, "DequantizeLinear"), count(out, "MatMul")) == (0, 1, 1)
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT}
    assert change <= 1e-5


@pytest.mark.parametrize("bits, users, options", [(3, 1, {}), (4, 2, {}), (4, 1, {"keep_lowbit_linear": True})])
def test_stays_packed(bits, users, options):
    model, _ = lowbit_linear(bits=bits, users=users, k=24 if bits == 3 else 16)
    assert lower_to_dequantize_linear(onnx.ModelProto.FromString(model.SerializeToString())) == (0 if not options else 1)
    out, change = verified(model, "lower_to_dequantize_linear", **options)
    assert count(out, "LowBitLinear") == users and change == 0.0
