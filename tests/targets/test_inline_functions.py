"""inline_functions: a local function the importer has no converter for is replaced by its body
(same outputs on onnxruntime, 1e-6 of the scale); one it converts (``keep``) stays a call."""

from __future__ import annotations

import edgeq.targets  # noqa: F401  (registers the pre_tvm passes)
from edgeq.opset import attach_functions
from _passes_testing import count, lowbit_linear, verified


def test_function_without_converter_is_inlined():
    model = attach_functions(lowbit_linear(bits=4)[0])
    out, change = verified(model, "inline_functions", keep=set())
    assert count(out, "LowBitLinear") == 0 and count(out, "MatMul") == 1 and not out.functions
    assert change <= 1e-6


def test_function_with_converter_stays():
    model = attach_functions(lowbit_linear(bits=4)[0])
    out, change = verified(model, "inline_functions", keep={"LowBitLinear"})
    assert count(out, "LowBitLinear") == 1 and len(out.functions) == 1 and change == 0.0
