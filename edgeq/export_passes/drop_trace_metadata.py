"""drop_trace_metadata: remove the Python stack trace and FX text torch's exporter stamps on every node.

They are bulky and hold local paths. Module scopes (``namespace``, ``name_scopes``) stay: they
say which layer a node is.
"""

from __future__ import annotations

import onnx

from edgeq.pass_manager import Pass, register_pass, register_property

TRACE_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def drop_trace_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    for node in proto.graph.node:
        kept = [kv for kv in node.metadata_props if kv.key not in TRACE_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return proto


def has_no_trace_metadata(model: onnx.ModelProto) -> bool:
    return not any(kv.key in TRACE_KEYS for node in model.graph.node for kv in node.metadata_props)


register_property("no_trace_metadata", has_no_trace_metadata)
register_pass(Pass(
    name="drop_trace_metadata", run=drop_trace_metadata, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"no_trace_metadata"}), tolerance=0.0,
))
