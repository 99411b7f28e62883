"""TVM back end: named targets and compilation of edgeq's ONNX into artifacts."""

from edgeq.targets.compile import Artifact, compile
from edgeq.targets.registry import TargetSpec, get_target, register_target, target_names

__all__ = ["Artifact", "compile", "TargetSpec", "get_target", "register_target", "target_names"]


def _register_gpu_kernels() -> None:
    """The Triton low-bit matmul serves WeightOnlyLinear on CUDA, where a GPU and Triton exist."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        from edgeq.targets import triton_lowbit  # noqa: F401


_register_gpu_kernels()
