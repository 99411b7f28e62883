"""The ``pre_tvm`` pipeline: the rewrites ``edgeq.targets.importer`` runs before TVM's ONNX
importer, one module each, on plain ONNX (the modules import nothing of TVM).

Order matters: functions without a converter are inlined first (their bodies may hold the
patterns below), low-bit DequantizeLinear + MatMul is packed before packed linears on one input
merge, and the conv and tied-weight forms come last. The ops they write are ``importer_ops``'.
"""

from edgeq.pass_manager import register_pipeline
from edgeq.targets.pre_tvm import inline_functions, merge_packed_linears, pack_lowbit_matmul, qdq_conv, tied_matmul  # noqa: F401  (register)

PRE_TVM_PIPELINE = register_pipeline("pre_tvm", ("inline_functions", "pack_lowbit_matmul", "merge_packed_linears", "qdq_conv", "tied_matmul"))
