"""drop_trace_metadata: the exporter's stack trace and FX text go, module scopes stay, the
outputs are bit for bit the same; a model without trace metadata is left byte for byte."""

from __future__ import annotations

import numpy as np

from edgeq.export_passes.drop_trace_metadata import TRACE_KEYS, drop_trace_metadata
from _passes_testing import model_from_text, verified

TEXT = """
g (float[N, 4] x) => (float[N, 4] y) {
    h = Relu (x)
    y = Neg (h)
}
"""


def _stamped():
    model = model_from_text(TEXT)
    for node in model.graph.node:
        for key, value in [(TRACE_KEYS[0], "File /home/me/model.py, line 3"), (TRACE_KEYS[1], "%relu"), ("namespace", "block.0")]:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    return model


def test_trace_keys_go_and_scopes_stay():
    out, change = verified(_stamped(), "drop_trace_metadata")
    assert [[kv.key for kv in n.metadata_props] for n in out.graph.node] == [["namespace"], ["namespace"]]
    assert change == 0.0


def test_model_without_traces_is_unchanged():
    model = model_from_text(TEXT)
    before = model.SerializeToString()
    assert drop_trace_metadata(model).SerializeToString() == before
    assert np.all([not n.metadata_props for n in model.graph.node])
