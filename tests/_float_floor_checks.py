"""A quantized causal LM exported and run on onnxruntime and TVM cpu, each judged against PyTorch by
the float floor rule (``edgeq.runtime.float_floor``): the check the quantizer tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgeq
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.ort import ort_session


def assert_exports_and_matches_pytorch(qmodel, ids, folder: Path) -> Path:
    """Export ``qmodel`` on ``ids``, run the file in onnxruntime and compiled for TVM cpu, and assert
    both within the float floor of PyTorch's logits; returns the ONNX path."""
    path = edgeq.export(qmodel, ids, folder / "model.onnx")
    ref32, ref64 = causal_lm_logits(qmodel, ids), float64_logits(qmodel, ids)
    got = ort_session(path).run(None, {"input_ids": ids.numpy()})[0]
    check = judge(got, ref32, ref64)
    assert check.ok and np.abs(got).max() > 0, check.to_dict()
    artifact = edgeq.compile(path, target="cpu", out_dir=folder / "cpu")
    check = judge(TvmExecutor(artifact.path).run([ids.numpy()])[0], ref32, ref64)
    assert check.ok, check.to_dict()
    return path
