"""docs/OPSET.md is generated from the registered ops and must match the code."""

from __future__ import annotations

from edgeq.opset import edgeq_ops
from edgeq.opset.doc import DOC_PATH, render


def test_opset_doc_is_up_to_date():
    assert DOC_PATH.read_text() == render(), "docs/OPSET.md is stale: run python -m edgeq.opset.doc --write"


def test_every_registered_op_is_documented_with_its_schema():
    text = render()
    for name, op in edgeq_ops().items():
        assert f"## {name}\n" in text
        for p in list(op.schema.inputs) + list(op.schema.outputs):
            assert f"| `{p.name}`" in text
        for attr in op.schema.attributes:
            assert f"| `{attr}` |" in text
