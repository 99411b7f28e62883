"""Static W8A8 in QDQ form: int8 weights per output channel (symmetric), uint8 activations per
tensor (affine, calibrated). The layers compute in float on dequantized values, exactly as the
exported QuantizeLinear/DequantizeLinear graph does, so PyTorch is the reference for onnxruntime
and TVM.

Activation range: min/max over the calibration batches (or the given percentile of |x| to cut
outliers), always including 0 so that zero is exact; scale = (max - min) / 255,
zero_point = round(-min / scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from edgeq.errors import QuantizationError
from edgeq.maths.groups import symmetric_per_channel
from edgeq.opset.qdq import dequantize_linear, quantize_linear
from edgeq.quant.base import as_is, calib_batches, quantizable_layers, register_export_rule, register_quantizer, set_submodule
from edgeq.quant.fold import fold_batchnorm
from edgeq.recipes import Recipe, register_preset, register_recipe_type


@dataclass(frozen=True)
class W8A8Recipe(Recipe):
    """Static W8A8: int8 per-output-channel symmetric weights, per-tensor affine uint8
    activations calibrated on sample inputs (min/max, or a percentile to cut outliers).
    BatchNorm is folded into the preceding conv first. Compute stays in float (QDQ)."""

    METHOD = "w8a8"
    WEIGHT_BITS = 8  # fixed: not a knob (edgeq.list_presets shows it)
    act_percentile: float = 100.0

    @property
    def needs_calibration(self) -> bool:
        return True


def affine_uint8_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32(max(hi - lo, 1e-8) / 255.0))  # the value ONNX stores
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return float(scale), zero_point


class _ActQuant(nn.Module):
    """Fake-quantize an activation through uint8 (QuantizeLinear -> DequantizeLinear in ONNX)."""

    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dequantize_linear(quantize_linear(x, self.scale, self.zero_point), self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.6g}, zero_point={self.zero_point.item()}"


class _QDQLayer(nn.Module):
    """Shared parts of QDQConv2d and QDQLinear: quantized input, int8 weight, float bias."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, input_scale: float, input_zero_point: int):
        super().__init__()
        q, scale = symmetric_per_channel(layer.weight, 8)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int8))
        bias = layer.bias.detach().float().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)
        self.input_quant = _ActQuant(input_scale, input_zero_point)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_linear(self.weight_int8, self.weight_scale, self.weight_zero_point, axis=0)


class QDQConv2d(_QDQLayer):
    def __init__(self, conv: nn.Conv2d, input_scale: float, input_zero_point: int):
        super().__init__(conv, input_scale, input_zero_point)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class QDQLinear(_QDQLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.dequantized_weight(), self.bias)


def observe_input_ranges(model: nn.Module, layers: dict[str, nn.Module], batches: list, percentile: float):
    """Run the float model on the calibration batches and record each layer's input range."""
    ranges: dict[str, list[float]] = {name: [float("inf"), float("-inf")] for name in layers}

    def hook(name):
        def fn(_module, args):
            x = args[0].detach()
            if percentile < 100.0:
                flat = x.flatten().float()
                lo = torch.quantile(flat, 1 - percentile / 100).item()
                hi = torch.quantile(flat, percentile / 100).item()
            else:
                lo, hi = x.min().item(), x.max().item()
            r = ranges[name]
            r[0], r[1] = min(r[0], lo), max(r[1], hi)

        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrate", leave=False, disable=len(batches) < 4):
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    finally:
        for h in handles:
            h.remove()
    return ranges


@register_quantizer(W8A8Recipe)
def quantize_w8a8(model: nn.Module, recipe: W8A8Recipe, calib) -> nn.Module:
    batches = calib_batches(calib)
    if not batches:
        raise QuantizationError("recipe 'w8a8' calibrates activation ranges: pass calib=<sample inputs>")
    first = batches[0]
    qmodel = fold_batchnorm(model, tuple(first) if isinstance(first, (tuple, list)) else (first,))
    layers = quantizable_layers(qmodel, recipe, kinds=(nn.Conv2d, nn.Linear))
    ranges = observe_input_ranges(qmodel, layers, batches, recipe.act_percentile)
    for name, layer in layers.items():
        scale, zp = affine_uint8_params(*ranges[name])
        cls = QDQConv2d if isinstance(layer, nn.Conv2d) else QDQLinear
        set_submodule(qmodel, name, cls(layer, scale, zp))
    return qmodel.eval()


register_recipe_type(W8A8Recipe)
register_preset("w8a8", W8A8Recipe())
for _layer in (QDQConv2d, QDQLinear, _ActQuant):  # their forward calls only translated QDQ ops
    register_export_rule(_layer)(as_is)
