"""dead_nodes: nodes and initializers that no output depends on go; the outputs are unchanged
(bit for bit); a node feeding a graph output is kept even when no node reads it."""

from __future__ import annotations

import numpy as np

from edgeq.passes.dead_nodes import remove_dead_nodes
from _passes_testing import assert_rewrites, model_from_text

DEAD_BRANCH = """
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] side) {
    unused = MatMul (x, w_unused)
    unused2 = Relu (unused)
    y = Relu (x)
    side = Sigmoid (x)
}
"""


def test_dead_branch_and_its_weight_go():
    model = model_from_text(DEAD_BRANCH, w_unused=np.ones((4, 4), np.float32))
    out = assert_rewrites(model, remove_dead_nodes, ["Relu", "Sigmoid"], tolerance=0)
    assert not out.graph.initializer
