"""The errors edgeq raises on bad input.

Each names the thing at fault (file, layer, node, recipe, target) so the CLI can print one line
instead of a stack trace from deep inside a library.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class: a user-facing failure with a one-line message."""


class ModelFileError(EdgeqError):
    """A model or artifact file is missing, unreadable or corrupt."""


class RecipeError(EdgeqError):
    """An unknown preset or a recipe whose settings do not fit the model."""


class QuantizationError(EdgeqError):
    """A layer cannot be quantized as asked (shape, calibration data, no quantizable layer)."""


class ExportError(EdgeqError):
    """A module or value has no ONNX export rule, or the opset cannot express it."""


class PassError(EdgeqError):
    """A graph pass cannot apply, or changed the model's outputs beyond tolerance."""


class CompileError(EdgeqError):
    """TVM cannot import or build the model for the chosen target."""


class TargetError(CompileError):
    """An unknown target, or a cross compiler that is not installed."""


class RuntimeExecError(EdgeqError):
    """An executor failed to run an artifact (including a device that stopped answering)."""


class ValidationError(EdgeqError):
    """An executor's outputs disagree with the reference beyond tolerance."""


class ContextLengthError(RuntimeExecError):
    """A generation session was asked to hold more tokens than its maximum context."""
