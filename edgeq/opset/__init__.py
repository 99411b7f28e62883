"""The op set: torch custom ops whose PyTorch implementation is the reference formula, and the
ONNX each one exports to (standard ONNX where it can say it, the ``edgeq`` domain elsewhere).

``translation_table()`` is what ``edgeq.export`` hands to torch's dynamo exporter.
"""

from __future__ import annotations

from typing import Callable

_TRANSLATIONS: dict[object, Callable] = {}


def register_translation(torch_op, onnx_fn: Callable) -> None:
    """Export ``torch_op`` (an OpOverload) with the onnxscript function ``onnx_fn``."""
    _TRANSLATIONS[torch_op] = onnx_fn


def translation_table() -> dict[object, Callable]:
    return dict(_TRANSLATIONS)


from edgeq.opset import qdq  # noqa: E402,F401
