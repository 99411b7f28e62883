"""Executors (torch, onnxruntime, TVM), numerics validation against the PyTorch reference."""

from edgeq.runtime.executors import Executor, OrtExecutor, TorchExecutor, TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.runtime.validate import Numerics, compare
from edgeq.runtime.report import ValidationReport, validate

__all__ = ["Executor", "OrtExecutor", "TorchExecutor", "TvmExecutor", "ort_session", "Numerics", "ValidationReport", "compare", "validate"]
