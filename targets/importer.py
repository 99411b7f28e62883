"""edgeq's ONNX importer for TVM Relax: the stock importer plus converters registered here.

The stock importer has no hook for extra ops; it looks converters up by op name (ignoring the
domain) in ``_get_convert_map``. ``import_onnx`` wraps that map with the converters registered
by ``register_converter`` for the duration of one import. A converter is an ``OnnxOpConverter``
subclass with ``_impl_v1(cls, bb, inputs, attr, params)`` (and later versions as needed).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import onnx

_CONVERTERS: dict[str, type] = {}


def register_converter(op_type: str):
    """Class decorator: use this converter for ``op_type`` (any domain) in ``import_onnx``."""

    def deco(cls):
        _CONVERTERS[op_type] = cls
        return cls

    return deco


@contextlib.contextmanager
def _extended_convert_map() -> Iterator[None]:
    from tvm.relax.frontend.onnx import onnx_frontend

    stock = onnx_frontend._get_convert_map

    def extended():
        table = dict(stock())
        table.update(_CONVERTERS)
        return table

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = stock


# Modules that register converters (one lowering module per op); imported on first import_onnx.
_LOWERINGS = ("integer_ops", "symbolic_shapes", "lower_lowbit", "lower_lowrank", "lower_dequantize", "lower_qdq_conv", "lower_tied")


def _load_lowerings() -> None:
    import importlib

    for name in _LOWERINGS:
        importlib.import_module(f"edgeq.targets.{name}")


def supported_ops() -> set[str]:
    """Op types the importer converts (stock converters plus edgeq's)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    _load_lowerings()
    return set(onnx_frontend._get_convert_map()) | set(_CONVERTERS) | {"Constant", "If"}


def prepare(model: onnx.ModelProto, target: str = "cpu") -> onnx.ModelProto:
    """A copy of the model as the importer takes it, after the ``pre_tvm`` pipeline
    (``edgeq.targets.pre_tvm``: functions with no converter inlined, low-bit DequantizeLinear +
    MatMul packed, packed linears on one input merged, 8-bit DequantizeLinear + Conv kept 8-bit,
    tied weights read transposed); a CompileError naming the first node whose op has no lowering
    for ``target``."""
    from edgeq.errors import CompileError
    from edgeq.pass_manager import run_passes
    from edgeq.targets.pre_tvm import PRE_TVM_PIPELINE

    supported = supported_ops()
    model, _ = run_passes(model, PRE_TVM_PIPELINE, checker=False, progress=False,
                          options={"inline_functions": {"keep": supported}})
    for node in model.graph.node:
        if node.op_type not in supported:
            domain = f"{node.domain}." if node.domain else ""
            raise CompileError(
                f"node {node.name or node.output[0]!r}: op {domain}{node.op_type} has no lowering for target {target!r}"
            )
    return model


def import_onnx(model: onnx.ModelProto, target: str = "cpu", **kwargs):
    """``tvm.relax.frontend.onnx.from_onnx`` with edgeq's converters; returns an IRModule."""
    from tvm.relax.frontend.onnx import from_onnx

    model = prepare(model, target)
    with _extended_convert_map(), warnings.catch_warnings():
        # TVM renames every dotted input (past_key_values.0.key) with one warning each; the
        # artifact's metadata keeps the ONNX names, so the renaming is nothing a user must act on
        warnings.filterwarnings("ignore", message="Renaming name ", category=UserWarning)
        return from_onnx(model, **kwargs)