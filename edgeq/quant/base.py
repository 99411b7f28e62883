"""What a method module registers with, and the helpers every quantizer uses.

A method is one module under ``edgeq/quant/`` (``lopro.py``, ``lrqmm.py``, ...) that defines and
registers, at import:

* its recipe, a frozen dataclass derived from ``edgeq.recipes.Recipe`` (``register_recipe_type``),
  which says whether it ``needs_calibration``, and its presets (``register_preset``);
* its quantizer, ``fn(model, recipe, calib) -> model`` (:func:`register_quantizer`);
* for each layer type it creates: its export rule, a twin module whose forward calls ``edgeq`` ops
  (:func:`register_export_rule`), and how a saved model rebuilds it (:func:`register_layer_format`).

``edgeq.quant`` imports the built-in method modules; a user's method registers the same way from
its own module (tests/test_method_one_module.py shows one).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from edgeq.errors import QuantizationError, RecipeError
from edgeq.recipes import Recipe, resolve_recipe

Handler = Callable[[nn.Module, Recipe, "Iterable[torch.Tensor] | torch.Tensor | None"], nn.Module]
ExportRule = Callable[[nn.Module], nn.Module]

_HANDLERS: dict[type[Recipe], Handler] = {}
_EXPORT_RULES: dict[type, ExportRule] = {}

# The exporter records each twin's "<module>.<class>" in the ONNX file's metadata. The built-in
# twins keep the module name they were first written under, so files stay byte-identical.
EXPORT_RULES_MODULE = "edgeq.export_rules"


def register_quantizer(recipe_type: type[Recipe]) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _HANDLERS[recipe_type] = fn
        return fn

    return deco


def quantize(model: nn.Module, recipe: Recipe | str, calib=None) -> nn.Module:
    """Quantize ``model`` as ``recipe`` (a Recipe or preset name) says.

    ``calib`` is a tensor of sample inputs, or an iterable of input batches, for the recipes that
    calibrate (``recipe.needs_calibration``: activation ranges, GPTQ Hessians). The input model
    is left unchanged.
    """
    recipe = resolve_recipe(recipe)
    handler = _HANDLERS.get(type(recipe))
    if handler is None:
        raise RecipeError(f"no quantizer is registered for recipe type {type(recipe).__name__}")
    return handler(model, recipe, calib)


def register_export_rule(layer_type: type) -> Callable[[ExportRule], ExportRule]:
    """``rule(layer) -> twin``: the module ``edgeq.export`` swaps in for ``layer`` while exporting
    (the layer itself where its forward already calls only translated ops)."""

    def deco(rule: ExportRule) -> ExportRule:
        _EXPORT_RULES[layer_type] = rule
        return rule

    return deco


def export_rules() -> dict[type, ExportRule]:
    return dict(_EXPORT_RULES)


def as_is(module: nn.Module) -> nn.Module:
    """The export rule of layers whose forward already calls only translated custom ops (QDQ)."""
    return module


@dataclass(frozen=True)
class LayerFormat:
    """How ``edgeq.quant.serialize`` saves and rebuilds one layer type: ``spec(layer)`` is the
    JSON-able structure (its ``kind`` included), ``empty(spec)`` a layer of that structure whose
    buffers the saved state dict then fills."""

    kind: str
    layer_type: type
    spec: Callable[[nn.Module], dict]
    empty: Callable[[dict], nn.Module]


_LAYER_FORMATS: dict[str, LayerFormat] = {}


def register_layer_format(fmt: LayerFormat) -> LayerFormat:
    _LAYER_FORMATS[fmt.kind] = fmt
    return fmt


def layer_formats() -> dict[str, LayerFormat]:
    return dict(_LAYER_FORMATS)


def is_skipped(name: str, recipe: Recipe) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in recipe.skip)


def quantizable_layers(model: nn.Module, recipe: Recipe, kinds=(nn.Linear, nn.Conv2d)) -> dict[str, nn.Module]:
    """The named layers a recipe applies to; an error naming the model when there are none."""
    layers = {
        name: m for name, m in model.named_modules() if isinstance(m, kinds) and not is_skipped(name, recipe)
    }
    if not layers:
        kinds_s = "/".join(k.__name__ for k in kinds)
        raise QuantizationError(
            f"{type(model).__name__} has no quantizable layers ({kinds_s}) left after skip={list(recipe.skip)}"
        )
    return layers


def calib_batches(calib) -> list:
    """Normalise ``calib`` (a tensor, a tuple of inputs, or an iterable of either) to a list of batches."""
    if calib is None:
        return []
    if isinstance(calib, torch.Tensor):
        return [calib]
    return list(calib)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
