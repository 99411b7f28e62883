"""``edgeq.export``: a quantized (or float) PyTorch model to an ONNX file, on torch's dynamo exporter.

QDQ layers leave as standard QuantizeLinear/DequantizeLinear around float Conv/MatMul. The file
is checked with ``onnx.checker`` and written atomically: on any failure nothing is left at
``path``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn

from edgeq.opset import translation_table
from edgeq._io import atomic_path
from edgeq.errors import ExportError

DEFAULT_OPSET = 21


def export(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` to ``path`` and return the path.

    ``dynamic_batch`` makes the first dimension of every input symbolic (``batch``).
    """
    path = Path(path)
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    input_names = list(input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]))
    output_names = list(output_names or ["output"])
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specializes a dimension of size 1; a batch of 2 keeps it symbolic.
        args = tuple(a.expand(2, *a.shape[1:]).contiguous() if a.shape[0] == 1 else a for a in args)
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic_shapes = tuple({0: batch} for _ in args)
    model = model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True,
                custom_translation_table=translation_table(),
                verbose=False,
            )
        proto = program.model_proto
    except Exception as exc:
        raise ExportError(f"torch.onnx export of {type(model).__name__} failed: {_first_line(exc)}") from None
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model fails onnx.checker: {_first_line(exc)}") from None
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress lines and warnings; edgeq reports its own outcome."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line, without terminal colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
