"""``edgeq.quantize``: one verb, a recipe, and a handler registered per recipe type.

A handler takes (model, recipe, calib) and returns the quantized model, which runs in PyTorch
and is the numerical reference for every later stage. Method modules register themselves
when imported at the bottom of this file.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, TypeVar

import torch
from torch import nn

from edgeq.errors import QuantizationError, RecipeError
from edgeq.recipes import Recipe, resolve_recipe

Handler = Callable[[nn.Module, Recipe, "Iterable[torch.Tensor] | torch.Tensor | None"], nn.Module]
_HANDLERS: dict[type[Recipe], Handler] = {}

R = TypeVar("R", bound=type[Recipe])


def register_quantizer(recipe_type: type[Recipe]) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _HANDLERS[recipe_type] = fn
        return fn

    return deco


def quantize(model: nn.Module, recipe: Recipe | str, calib=None) -> nn.Module:
    """Quantize ``model`` as ``recipe`` (a Recipe or preset name) says.

    ``calib`` is a tensor of sample inputs, or an iterable of input batches, for the methods
    that calibrate (activation ranges, GPTQ Hessians). The input model is left unchanged.
    """
    recipe = resolve_recipe(recipe)
    handler = _HANDLERS.get(type(recipe))
    if handler is None:
        raise RecipeError(f"no quantizer is registered for recipe type {type(recipe).__name__}")
    check_calibration(model, calib)
    return handler(model, recipe, calib)


def _first_sample(batch):
    if isinstance(batch, torch.Tensor):
        return batch[:1] if batch.dim() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_first_sample(b) for b in batch)
    return batch


def _shapes(batch) -> str:
    if isinstance(batch, torch.Tensor):
        return str(list(batch.shape))
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(_shapes(b) for b in batch) + ")"
    return type(batch).__name__


def check_calibration(model: nn.Module, calib) -> None:
    """Run the first sample of the first calibration batch through ``model`` before any work: data
    of the wrong shape or type is a QuantizationError naming the input's shape and the layer it
    does not fit, not a traceback from deep inside a calibration loop."""
    try:
        batches = calib_batches(calib)
    except TypeError:
        raise QuantizationError(f"calib must be a tensor or an iterable of input batches, got {type(calib).__name__}") from None
    if not batches:
        return
    batch = batches[0]
    if not isinstance(batch, (torch.Tensor, tuple, list)):
        raise QuantizationError(f"calibration batch 0 is a {type(batch).__name__}, not a tensor or a tuple of tensors")
    entered: list[str] = []
    names = {m: name for name, m in model.named_modules()}

    def enter(module, _inputs) -> None:
        entered.append(names[module])

    def leave(_module, _inputs, _output) -> None:  # returns None: the output stays as it is
        entered.pop()

    hooks = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    sample = _first_sample(batch)
    modes = {m: m.training for m in names}  # run in eval mode: BatchNorm in training mode refuses one sample
    model.eval()
    try:
        with torch.no_grad():
            model(*sample) if isinstance(sample, (tuple, list)) else model(sample)
    except Exception as exc:
        layer = next((name for name in reversed(entered) if name), None)
        where = f"layer {layer!r} ({type(model.get_submodule(layer)).__name__})" if layer else f"the model ({type(model).__name__})"
        text = str(exc).strip().splitlines()
        raise QuantizationError(f"calibration input of shape {_shapes(batch)} does not fit {where}: "
                                f"{type(exc).__name__}: {text[0] if text else ''}") from None
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training


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


# Method modules register their handlers on import.
from edgeq.quant import w8a8  # noqa: E402,F401
from edgeq.quant import dyadic  # noqa: E402,F401
from edgeq.quant import weight_only_recipes  # noqa: E402,F401
from edgeq.quant import lrqmm  # noqa: E402,F401
from edgeq.quant import lopro  # noqa: E402,F401
