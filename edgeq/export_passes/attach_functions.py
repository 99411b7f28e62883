"""attach_functions: give every ``edgeq`` node its flat ONNX function body, so stock onnxruntime runs the file.

``edgeq.opset.attach_functions`` does the work (one body per attribute set, at the model's
opset); as a pass it is named, checked and verifiable like the others.
"""

from __future__ import annotations

import onnx

from edgeq.opset import DOMAIN, attach_functions
from edgeq.pass_manager import Pass, register_pass, register_property


def has_edgeq_functions(model: onnx.ModelProto) -> bool:
    bodies = {(f.domain, f.name, f.overload) for f in model.functions}
    return all((n.domain, n.op_type, n.overload) in bodies for n in model.graph.node if n.domain == DOMAIN)


register_property("edgeq_functions", has_edgeq_functions)  # every edgeq node has its function body
register_pass(Pass(
    name="attach_functions", run=attach_functions, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"edgeq_functions"}), tolerance=0.0,
))
