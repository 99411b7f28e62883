"""expand_packed_weights: a PackedWeight placeholder (a weight-only conv's weight) becomes one
uint4 DequantizeLinear, or with ``standard=False`` (and at 3 bits, which has no standard dtype)
the unpack and dequantize ops; either computes the packed weight's real values (1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.maths.packing import pack
from edgeq.opset.lowbit_embedding import PLACEHOLDER_DOMAIN
from edgeq.pass_manager import seeded_inputs
from _passes_testing import count, run, verified

N, K, GROUP = 4, 24, 8


def _placeholder(bits: int):
    """x [batch, K] -> Gemm(x, PackedWeight(q, s, z), transB) -> y, and the weight it means."""
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 1 << bits, (N, K))
    scales = rng.uniform(0.01, 0.1, (N, K // GROUP)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (N, K // GROUP)).astype(np.uint8)
    nodes = [helper.make_node("PackedWeight", ["qw", "s", "z"], ["w"], name="conv.weight", domain=PLACEHOLDER_DOMAIN,
                              bits=bits, group_size=GROUP),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
                              [numpy_helper.from_array(pack(torch.from_numpy(q), bits).numpy(), "qw"),
                               numpy_helper.from_array(scales, "s"), numpy_helper.from_array(zeros, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(PLACEHOLDER_DOMAIN, 1)])
    weight = (q - np.repeat(zeros, GROUP, axis=1)) * np.repeat(scales, GROUP, axis=1)
    return model, weight.astype(np.float32)


@pytest.mark.parametrize("bits, standard, dequantize_linears", [(4, True, 1), (4, False, 0), (3, True, 0)])
def test_placeholder_becomes_standard_ops(bits, standard, dequantize_linears):
    model, weight = _placeholder(bits)
    out, change = verified(model, "expand_packed_weights", standard=standard)
    assert count(out, "PackedWeight") == 0 and count(out, "DequantizeLinear") == dequantize_linears
    assert all(o.domain != PLACEHOLDER_DOMAIN for o in out.opset_import)
    assert change <= 1e-5
    feeds = seeded_inputs(out)
    reference = feeds["x"] @ weight.T
    assert np.abs(run(out, feeds)[0] - reference).max() <= 1e-6 * np.abs(reference).max() * K
    if dequantize_linears:
        assert TensorProto.UINT4 in {t.data_type for t in out.graph.initializer}
