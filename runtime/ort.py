"""onnxruntime sessions with every numerics-relevant option stated.

onnxruntime rewrites DequantizeLinear + MatMul into MatMulNBits and, unless told otherwise,
quantizes the activations to int8 there. Validation therefore always sets
``session.qdq_matmulnbits_accuracy_level``: 0 (exact float activations) to validate, 4 (int8
activations) for speed.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgeq.errors import ModelFileError, first_line

ACCURACY_VALIDATE = 0


def ort_session(
    path: str | Path | bytes,
    accuracy_level: int = ACCURACY_VALIDATE,
    threads: int | None = None,
    profile: bool = False,
) -> ort.InferenceSession:
    """An onnxruntime CPU session; ``accuracy_level`` is MatMulNBits' activation precision."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int(accuracy_level)))
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.enable_profiling = profile
    source = path if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes) and not Path(path).exists():
        raise ModelFileError(f"{path}: no such file")
    try:
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        where = "model bytes" if isinstance(path, bytes) else str(path)
        first = first_line(exc)
        raise ModelFileError(f"{where}: onnxruntime cannot load it: {first}") from None
