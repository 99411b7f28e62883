"""Helpers for the pass tests: models from ONNX text plus numpy initializers, and a before/after
run on onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.passes.manager import seeded_inputs
from edgeq.runtime.ort import ort_session


def model_from_text(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in initializers.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort_session(model.SerializeToString()).run(None, feeds)


def before_after(model: onnx.ModelProto, rewrite, seed: int = 0):
    """(outputs before, outputs after, rewritten model); the input model is left unchanged."""
    feeds = seeded_inputs(model, seed)
    before = run(model, feeds)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    after_model = rewrite(copy)
    onnx.checker.check_model(after_model, full_check=True)
    return before, run(after_model, feeds), after_model


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]
