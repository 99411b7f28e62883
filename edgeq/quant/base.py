"""What a method module registers with, and the helpers every quantizer uses.

A method is one module under ``edgeq/quant/`` (``lopro.py``, ``lrqmm.py``, ...) that defines and
registers, at import:

* its recipe, a frozen dataclass derived from ``edgeq.recipes.Recipe`` (``register_recipe_type``),
  which says whether it ``needs_calibration``, and its presets (``register_preset``);
* its quantizer, ``fn(model, recipe, calib) -> model`` (:func:`register_quantizer`);
* for each layer type it creates: its export rule, a twin module whose forward calls ``edgeq`` ops
  (:func:`register_export_rule`), and how a saved model rebuilds it (:func:`register_layer_format`).

``edgeq.quant`` imports the built-in method modules; a user's method registers the same way from
its own module (tests/quant/test_base_one_module_method.py shows one).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from edgeq.errors import QuantizationError, RecipeError, first_line
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


def quantize(model: nn.Module | str, recipe: Recipe | str, calib=None) -> nn.Module:
    """Quantize ``model`` as ``recipe`` (a Recipe or preset name) says.

    ``calib`` is a tensor of sample inputs, or an iterable of input batches, for the recipes that
    calibrate (``recipe.needs_calibration``: activation ranges, GPTQ Hessians). The input model
    is left unchanged. ``model`` may also be a model name (``edgeq.model_spec.load_model``).
    """
    if isinstance(model, str):
        from edgeq.model_spec import load_model

        model = load_model(model).module
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
        raise QuantizationError(f"calibration input of shape {_shapes(batch)} does not fit {where}: "
                                f"{type(exc).__name__}: {first_line(exc)}") from None
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training


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


def hf_conv1d_as_linear(model: nn.Module, recipe: Recipe) -> None:
    """Replace, in place, every Hugging Face ``Conv1D`` (GPT-2's Linear, weight stored [in, out]:
    ``y = x @ W + b``) not skipped by ``recipe`` with the equivalent ``nn.Linear`` (weight Wᵀ), so
    the methods that quantize Linears quantize it too."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # without transformers there is no such layer
        return
    for name, m in list(model.named_modules()):
        if isinstance(m, Conv1D) and not is_skipped(name, recipe):
            in_features, out_features = m.weight.shape
            linear = nn.Linear(in_features, out_features, bias=m.bias is not None,
                               device=m.weight.device, dtype=m.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(m.weight.t())
                if m.bias is not None:
                    linear.bias.copy_(m.bias)
            set_submodule(model, name, linear)


def calib_batches(calib) -> list:
    """Normalise ``calib`` (a tensor, a tuple of inputs, or an iterable of either) to a list of batches."""
    if calib is None:
        return []
    if isinstance(calib, torch.Tensor):
        return [calib]
    return list(calib)


class StopForward(Exception):
    """Raised from a forward hook to end the pass once the inputs it wanted are captured."""


def run_module(module: nn.Module, batch, kwargs=None):
    """``module`` called on one calibration batch (a tensor, or a tuple of its inputs)."""
    if isinstance(batch, (tuple, list)):
        return module(*batch, **(kwargs or {}))
    return module(batch, **(kwargs or {}))


def capture_block_inputs(model: nn.Module, first_block: nn.Module, batches: list) -> list[tuple[torch.Tensor, dict]]:
    """Per batch, the hidden states and keyword arguments (mask, positions) that the decoder
    ``model`` passes its ``first_block``; the pass stops there."""
    captured = []

    def hook(_module, args, kwargs):
        captured.append((args[0], dict(kwargs)))
        raise StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(batch.to(device), use_cache=False)
                except StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
