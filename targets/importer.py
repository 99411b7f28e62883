"""edgeq's ONNX importer for TVM Relax: the stock importer plus converters registered here.

The stock importer has no hook for extra ops; it looks converters up by op name (ignoring the
domain) in ``_get_convert_map``. ``import_onnx`` wraps that map with the converters registered
by ``register_converter`` for the duration of one import. A converter is an ``OnnxOpConverter``
subclass with ``_impl_v1(cls, bb, inputs, attr, params)`` (and later versions as needed).
"""

from __future__ import annotations

import contextlib
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


def import_onnx(model: onnx.ModelProto, **kwargs):
    """``tvm.relax.frontend.onnx.from_onnx`` with edgeq's converters; returns an IRModule."""
    from tvm.relax.frontend.onnx import from_onnx

    with _extended_convert_map():
        return from_onnx(model, **kwargs)
from edgeq.targets import integer_ops  # noqa: E402,F401  (integer-only converters register on import)
