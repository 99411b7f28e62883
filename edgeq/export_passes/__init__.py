"""The ``export`` pipeline: the rewrites ``edgeq.export`` runs on torch's ONNX, one module each.

Order matters: output names get single assignment first (the others look values up by name),
packed-weight placeholders become standard ops, low-bit linears with a standard dtype become
DequantizeLinear + MatMul, the remaining ``edgeq`` nodes get their function bodies, and the
exporter's stack traces go last.
"""

from edgeq.export_passes import (  # noqa: F401  (register)
    attach_functions, drop_trace_metadata, expand_packed_weights, lower_to_dequantize_linear, separate_output_names,
)
from edgeq.pass_manager import register_pipeline

EXPORT_PIPELINE = register_pipeline("export", (
    "separate_output_names", "expand_packed_weights", "lower_to_dequantize_linear", "attach_functions", "drop_trace_metadata",
))
