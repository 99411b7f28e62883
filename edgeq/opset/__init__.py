"""The op set, defined in one place and read by every stage.

Two kinds of entries:

* torch custom ops whose PyTorch implementation is the reference formula, with the ONNX each
  exports to (``register_translation``), handed to torch's dynamo exporter by ``edgeq.export``;
* ``edgeq``-domain ONNX ops (``register_op``): each has a schema, a flat ONNX function body of
  standard ops (so stock onnxruntime runs the file with no plugin), and a numpy reference.
  ``attach_functions`` adds the bodies of the ops a model uses to ``model.functions``.

An op module ``edgeq/opset/<op>.py`` defines its ``EdgeqOp`` and calls ``register_op`` at import;
the imports at the bottom of this file load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

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


from edgeq.opset import qdq  # noqa: E402,F401
from edgeq.opset import dyadic  # noqa: E402,F401
