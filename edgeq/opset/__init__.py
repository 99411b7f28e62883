"""The op set, defined in one place and read by every stage.

Two kinds of entries:

* torch custom ops whose PyTorch implementation is the reference formula, with the ONNX each
  exports to (``register_translation``), handed to torch's dynamo exporter by ``edgeq.export``;
* ``edgeq``-domain ONNX ops (``register_op``): each has a schema, a flat ONNX function body of
  standard ops (so stock onnxruntime runs the file with no plugin), and a numpy reference.
  ``attach_functions`` adds the bodies of the ops a model uses to ``model.functions``.

An op module ``edgeq/opset/<op>.py`` defines its ``EdgeqOp`` and calls ``register_op`` at import;
importing ``edgeq.opset`` loads them (the registries are ``edgeq.opset.registry``).
"""

from edgeq.opset.registry import (
    DOMAIN,
    OPSET_VERSION,
    EdgeqOp,
    attach_functions,
    edgeq_ops,
    node_attributes,
    overload_name,
    register_op,
    register_translation,
    translation_table,
)
# each op module registers its ops on import; this order is the order of docs/OPSET.md
from edgeq.opset import qdq  # noqa: F401,I001
from edgeq.opset import lowbit_linear  # noqa: F401
from edgeq.opset import lowbit_embedding  # noqa: F401
from edgeq.opset import hadamard  # noqa: F401
from edgeq.opset import lowrank_linear  # noqa: F401
from edgeq.opset import dyadic  # noqa: F401

__all__ = ["DOMAIN", "OPSET_VERSION", "EdgeqOp", "attach_functions", "edgeq_ops", "node_attributes", "overload_name",
           "register_op", "register_translation", "translation_table"]
