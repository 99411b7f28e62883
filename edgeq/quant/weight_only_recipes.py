"""Weight-only recipes (RTN, GPTQ; optional QuaRot rotation and AWQ scales), their presets and the handler.

Every ``nn.Linear``/``nn.Conv2d`` not matched by ``skip`` becomes a ``WeightOnlyLinear``/
``WeightOnlyConv2d``. Presets skip ``lm_head`` (kept in float, as are embeddings, which are not
linear layers), so on an LLM they quantize every linear of the decoder blocks.

Preset names: ``w{bits}g{group}-[hadamard-|awq-]{rtn|gptq|gptq-static}`` (``-static``: GPTQ with static groups; ``awq-``: 3 and 4 bits, rtn and gptq) (with ``group_fallback``: a layer whose
input width the group does not divide gets the largest power-of-two group that does); ``w8-rtn`` and ``w4-rtn`` are per
output channel (``group_size=None``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from torch import nn
from tqdm.auto import tqdm

from edgeq.errors import QuantizationError
from edgeq.maths.groups import check_grid, quantize_groups, resolve_group_size
from edgeq.quant.awq import apply_awq
from edgeq.quant.base import calib_batches, hf_conv1d_as_linear, quantizable_layers, register_quantizer, set_submodule
from edgeq.quant.gptq import gptq_quantize_model
from edgeq.quant.quarot import check_rotatable, rotate_decoder
from edgeq.quant.weight_only import flat_weight, from_float_layer
from edgeq.recipes import Recipe, register_preset, register_recipe_type


@dataclass(frozen=True)
class WeightOnlyRecipe(Recipe):
    """Fields shared by the weight-only methods.

    bits: 2, 3, 4 or 8. group_size: consecutive input features sharing a scale and zero point
    (None: one per output channel). symmetric: zero point fixed at 2**(bits-1). clip_steps: >1
    searches that many clip ratios in [1, 0.5] per group for the least squared error.
    group_fallback: where group_size does not divide a layer's input features, use the largest
    power of two below it that does (presets set it: SmolLM2's 576-wide inputs get g64 at g128).
    hadamard: QuaRot rotation of a decoder (``edgeq.quant.quarot``; the architectures in
    ``edgeq.quant.architectures``) before quantizing (``seed`` picks its signs).
    awq: search per-channel activation-aware scales on calibration data and fold them into the
    float model before quantizing (``edgeq.quant.awq``; after the rotation where both are set);
    ``awq_grid`` steps of the exponent α in [0, 1].
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    clip_steps: int = 0
    group_fallback: bool = False
    hadamard: bool = False
    seed: int = 0
    awq: bool = False
    awq_grid: int = 20

    @property
    def needs_calibration(self) -> bool:
        return self.awq


@dataclass(frozen=True)
class RTNRecipe(WeightOnlyRecipe):
    """Round to nearest on the group grid; no calibration data."""

    METHOD = "rtn"


@dataclass(frozen=True)
class GPTQRecipe(WeightOnlyRecipe):
    """GPTQ with Hessians from calibration inputs: ``damp`` times the mean Hessian diagonal is
    added to it; ``act_order`` quantizes columns by decreasing activation energy;
    ``block_size`` columns per lazy update; ``static_groups`` fixes every group's scale and zero
    from the original weight before the act-order pass (else each when its first column comes up)."""

    METHOD = "gptq"
    damp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    static_groups: bool = False

    @property
    def needs_calibration(self) -> bool:
        return True


@register_quantizer(RTNRecipe)
@register_quantizer(GPTQRecipe)
def quantize_weight_only(model: nn.Module, recipe: WeightOnlyRecipe, calib) -> nn.Module:
    batches = calib_batches(calib)
    if isinstance(recipe, GPTQRecipe) and not batches:
        raise QuantizationError("recipe 'gptq' needs calibration data for its Hessians: pass calib=<sample inputs>")
    if recipe.awq and not batches:
        raise QuantizationError(f"recipe '{recipe.method}' with awq=True needs calibration data for its activation "
                                "statistics: pass calib=<sample inputs>")
    if recipe.hadamard:
        check_rotatable(model)  # an architecture the rotation cannot handle is refused before any work
    start = time.perf_counter()
    qmodel = copy.deepcopy(model).eval()
    hf_conv1d_as_linear(qmodel, recipe)
    layers = quantizable_layers(qmodel, recipe, kinds=(nn.Linear, nn.Conv2d))
    for name, layer in layers.items():
        in_features = flat_weight(layer).shape[1]
        check_grid(recipe.bits, resolve_group_size(recipe.group_size, in_features, recipe.group_fallback, name),
                   in_features, layer=name)
    if recipe.hadamard:
        rotate_decoder(qmodel, recipe.seed)
        layers = quantizable_layers(qmodel, recipe, kinds=(nn.Linear, nn.Conv2d))
    if recipe.awq:
        qmodel.edgeq_awq = apply_awq(qmodel, batches, recipe.bits, recipe.group_size, symmetric=recipe.symmetric,
                                     group_fallback=recipe.group_fallback, grid=recipe.awq_grid, skip=recipe.skip)
    if isinstance(recipe, GPTQRecipe):
        gptq_quantize_model(qmodel, layers, recipe, batches)
    else:
        for name, layer in tqdm(layers.items(), desc="rtn", leave=False):
            weight = flat_weight(layer)
            group_size = resolve_group_size(recipe.group_size, weight.shape[1], recipe.group_fallback, name)
            gq = quantize_groups(weight, recipe.bits, group_size, recipe.symmetric,
                                 recipe.clip_steps, layer=name)
            dev = layer.weight.device
            set_submodule(qmodel, name, from_float_layer(layer, gq.q.to(dev), gq.scales.to(dev), gq.zeros.to(dev), recipe.bits))
    qmodel.edgeq_recipe = recipe
    qmodel.edgeq_quantize_seconds = time.perf_counter() - start
    return qmodel


register_recipe_type(RTNRecipe)
register_recipe_type(GPTQRecipe)
for _bits, _group in ((b, g) for b in (4, 3, 2) for g in (128, 64, 32)):
    for _hadamard in (False, True):
        _tag = "hadamard-" if _hadamard else ""
        register_preset(f"w{_bits}g{_group}-{_tag}rtn", RTNRecipe(skip=("lm_head",), bits=_bits, group_size=_group,
                                                                  group_fallback=True, hadamard=_hadamard))
        register_preset(f"w{_bits}g{_group}-{_tag}gptq", GPTQRecipe(skip=("lm_head",), bits=_bits, group_size=_group,
                                                                  group_fallback=True, hadamard=_hadamard))
        register_preset(f"w{_bits}g{_group}-{_tag}gptq-static",
                        GPTQRecipe(skip=("lm_head",), bits=_bits, group_size=_group, group_fallback=True,
                                   hadamard=_hadamard, static_groups=True))
    if _bits > 2:  # at W2 g64 AWQ made SmolLM2's GPTQ worse (benchmarks/RESULTS.md): no preset there
        register_preset(f"w{_bits}g{_group}-awq-rtn", RTNRecipe(skip=("lm_head",), bits=_bits, group_size=_group,
                                                                group_fallback=True, awq=True))
        register_preset(f"w{_bits}g{_group}-awq-gptq", GPTQRecipe(skip=("lm_head",), bits=_bits, group_size=_group,
                                                                  group_fallback=True, awq=True))
register_preset("w8-rtn", RTNRecipe(skip=("lm_head",), bits=8, group_size=None, symmetric=True))
register_preset("w4-rtn", RTNRecipe(skip=("lm_head",), bits=4, group_size=None))
register_preset("w4-gptq", GPTQRecipe(skip=("lm_head",), bits=4, group_size=None))
