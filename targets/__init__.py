"""TVM back end: named targets and compilation of edgeq's ONNX into artifacts."""

from edgeq.targets import pre_tvm  # noqa: F401  (registers the pre_tvm pipeline; plain ONNX, no TVM)
from edgeq.targets.compile import Artifact, compile
from edgeq.targets.registry import TargetSpec, get_target, register_target, target_names

__all__ = ["Artifact", "compile", "TargetSpec", "get_target", "register_target", "target_names"]
