"""The errors edgeq raises on bad input.

Each names the thing at fault (file, layer, node, recipe, target) so the CLI can print one line
instead of a stack trace from deep inside a library. Each class has its own ``exit_code``, the
``edgeq`` command's exit status for it (docs/ERRORS.md lists them); a subclass without one of its
own exits with its parent's.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class: a user-facing failure with a one-line message."""

    exit_code = 3


class ModelFileError(EdgeqError):
    """A model or artifact file is missing, unreadable or corrupt."""

    exit_code = 4


class RecipeError(EdgeqError):
    """An unknown preset or a recipe whose settings do not fit the model."""

    exit_code = 5


class QuantizationError(EdgeqError):
    """A layer cannot be quantized as asked (shape, calibration data, no quantizable layer)."""

    exit_code = 6


class ExportError(EdgeqError):
    """A module or value has no ONNX export rule, or the opset cannot express it."""

    exit_code = 7


class PassError(EdgeqError):
    """A graph pass cannot apply, or changed the model's outputs beyond tolerance."""

    exit_code = 8


class CompileError(EdgeqError):
    """TVM cannot import or build the model for the chosen target."""

    exit_code = 9


class TargetError(CompileError):
    """An unknown target, or a cross compiler that is not installed."""

    exit_code = 10


class RuntimeExecError(EdgeqError):
    """An executor failed to run an artifact (including a device that stopped answering)."""

    exit_code = 11


class ValidationError(EdgeqError):
    """An executor's outputs disagree with the reference beyond tolerance."""

    exit_code = 12


class ContextLengthError(RuntimeExecError):
    """A generation session was asked to hold more tokens than its maximum context."""

    exit_code = 13


class OutputPathError(EdgeqError):
    """An output path cannot be written: it is a directory, lies under a file, or its folder is
    not writable. Raised before any work, so nothing is computed only to be lost."""

    exit_code = 14


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a library exception's message (its type's name when the
    message is empty: TVM raises some with none), for a one-line EdgeqError."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
