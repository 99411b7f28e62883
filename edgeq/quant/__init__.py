"""``edgeq.quantize``: one verb, a recipe, and a quantizer registered per recipe type.

A quantizer takes (model, recipe, calib) and returns the quantized model, which runs in PyTorch
and is the numerical reference for every later stage. Each method is one module that registers
its recipe, presets, quantizer, layers, export rules and layer formats (``edgeq.quant.base``);
importing this package imports the built-in ones.
"""

from __future__ import annotations

from edgeq.quant.base import (
    calib_batches,
    check_calibration,
    is_skipped,
    quantizable_layers,
    quantize,
    register_export_rule,
    register_layer_format,
    register_quantizer,
    set_submodule,
)

# the built-in methods and shared layers: each registers itself on import
from edgeq.quant import weight_only, embedding, hadamard  # noqa: F401,E402,I001
from edgeq.quant import w8a8, dyadic, weight_only_recipes, lrqmm, lopro, allocate  # noqa: F401,E402

__all__ = ["calib_batches", "check_calibration", "is_skipped", "quantizable_layers", "quantize", "register_export_rule",
           "register_layer_format", "register_quantizer", "set_submodule"]
