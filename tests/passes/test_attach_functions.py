"""attach_functions (as a pass): every edgeq node gets its function body, so stock onnxruntime
computes ``x @ W^T`` of the packed weight (1e-5 of the output scale); a model without edgeq
nodes gets none."""

from __future__ import annotations

import numpy as np

from edgeq.pass_manager import seeded_inputs
from _passes_testing import lowbit_linear, model_from_text, run, verified


def test_every_edgeq_node_gets_a_body():
    model, weight = lowbit_linear(bits=4, users=2)
    out, change = verified(model, "attach_functions")
    assert [(f.name, f.overload) for f in out.functions] == [("LowBitLinear", out.graph.node[0].overload)]
    assert all(n.overload == out.graph.node[0].overload for n in out.graph.node)
    assert change == 0.0
    feeds = seeded_inputs(out)
    reference = feeds["x"] @ weight.T
    for y in run(out, feeds):
        assert np.abs(y - reference).max() <= 1e-5 * np.abs(reference).max()


def test_standard_model_gets_no_functions():
    model = model_from_text("""
g (float[N, 4] x) => (float[N, 4] y) {
    y = Relu (x)
}
""")
    out, _ = verified(model, "attach_functions")
    assert not out.functions
