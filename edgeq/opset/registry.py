"""The op set's registries: torch ops' ONNX translations and ``edgeq``-domain ops (schema, function
body, reference), and ``attach_functions``. Op modules register here; ``edgeq.opset`` loads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from edgeq.errors import ExportError

DOMAIN = "edgeq"
OPSET_VERSION = 1

_TRANSLATIONS: dict[object, Callable] = {}


def register_translation(torch_op, onnx_fn: Callable) -> None:
    """Export ``torch_op`` (an OpOverload) with the onnxscript function ``onnx_fn``."""
    _TRANSLATIONS[torch_op] = onnx_fn


def translation_table() -> dict[object, Callable]:
    return dict(_TRANSLATIONS)


@dataclass(frozen=True)
class EdgeqOp:
    """One ``edgeq``-domain op.

    ``function(attrs, opset)`` returns the flat FunctionProto for a node with those attribute
    values at that standard opset (attribute values can change the body, e.g. the bit width);
    ``reference(*inputs, **attrs)`` is the numpy formula every stage is checked against.
    """

    name: str
    schema: onnx.defs.OpSchema
    function: Callable[..., onnx.FunctionProto]
    reference: Callable
    doc: str


_OPS: dict[str, EdgeqOp] = {}


def register_op(op: EdgeqOp) -> EdgeqOp:
    _OPS[op.name] = op
    try:
        onnx.defs.register_schema(op.schema)
    except Exception:  # already registered (module re-import)
        pass
    return op


def edgeq_ops() -> dict[str, EdgeqOp]:
    return dict(_OPS)


def node_attributes(node: onnx.NodeProto) -> dict:
    """An ``edgeq`` node's attribute values, plus ``num_inputs`` (optional inputs change the body)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs["num_inputs"] = sum(1 for name in node.input if name)
    return attrs


def overload_name(attrs: dict) -> str:
    """One function body per distinct attribute set; ONNX function overloads tell them apart."""
    parts = []
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, (list, tuple)):
            value = "x".join(str(v) for v in value)
        parts.append(f"{key}{value}")
    return "_".join(parts)


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every ``edgeq`` node of ``model``'s graph its flat function body (in place).

    Each node gets an ``overload`` naming its attribute set; ``model.functions`` gets one body per
    overload, built at the model's standard opset, and the ``edgeq`` domain is imported.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    present = {(f.domain, f.name, f.overload) for f in model.functions}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in _OPS:
            raise ExportError(f"node {node.name!r}: {DOMAIN}.{node.op_type} is not a registered edgeq op")
        attrs = node_attributes(node)
        node.overload = overload_name(attrs)
        key = (DOMAIN, node.op_type, node.overload)
        if key not in present:
            fn = _OPS[node.op_type].function(attrs, opset)
            fn.overload = node.overload
            model.functions.append(fn)
            present.add(key)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    model.ir_version = max(model.ir_version, 10)  # function overloads
    return model
