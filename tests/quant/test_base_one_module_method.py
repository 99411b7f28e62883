"""A quantization method is one module: this file is that module for a toy method (recipe and
preset, quantizer, layer, export rule, saved-model format), registered here and nowhere else,
and the test takes it through ``edgeq.quantize`` -> ``edgeq.export`` -> onnxruntime.

The toy method, "pow2": 4-bit asymmetric RTN per group whose scales are rounded UP to a power of
two (so a dequantize is an exponent add on hardware without multipliers):

    s = 2^ceil(log2((max - min) / 15)),  z = round(-min / s),  q = clamp(round(w / s) + z, 0, 15)
    W = (q - z) * s
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

import edgeq
from edgeq.maths.groups import dequantize_packed
from edgeq.maths.packing import pack
from edgeq.quant.base import (LayerFormat, quantizable_layers, register_export_rule, register_layer_format,
                              register_quantizer, set_submodule)
from edgeq.recipes import Recipe, register_preset, register_recipe_type
from edgeq.runtime.ort import ort_session

TOL = 1e-5  # of the output's scale: float32 matmul order only


@dataclass(frozen=True)
class Pow2Recipe(Recipe):
    """4-bit groups with power-of-two scales; data-free."""

    METHOD = "toy-pow2"
    group_size: int = 16


class Pow2Linear(nn.Module):
    """Packed 4-bit weights [out, in/2], float16 power-of-two scales and uint8 zeros per group."""

    bits = 4

    def __init__(self, qweight, scales, zeros, group_size: int, bias=None):
        super().__init__()
        self.group_size = group_size
        self.out_features, self.in_features = qweight.shape[0], qweight.shape[1] * 2
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        return dequantize_packed(self.qweight, self.scales, self.zeros, self.bits, self.group_size)

    def forward(self, x):
        return F.linear(x, self.weight().to(x.dtype), self.bias)


def pow2_linear(layer: nn.Linear, group_size: int) -> Pow2Linear:
    w = layer.weight.detach().float().reshape(layer.out_features, -1, group_size)
    lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    scales = torch.exp2(torch.ceil(torch.log2(((hi - lo) / 15).clamp(min=2.0 ** -14)))).half()
    zeros = torch.round(-lo / scales.float()).clamp(0, 15)
    q = torch.round(w / scales.float().unsqueeze(-1) + zeros.unsqueeze(-1)).clamp(0, 15)
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return Pow2Linear(pack(q.reshape(layer.out_features, -1).to(torch.uint8), 4), scales, zeros.to(torch.uint8),
                      group_size, bias)


@register_quantizer(Pow2Recipe)
def quantize_pow2(model: nn.Module, recipe: Pow2Recipe, calib=None) -> nn.Module:
    import copy

    model = copy.deepcopy(model).eval()
    for name, layer in quantizable_layers(model, recipe, kinds=(nn.Linear,)).items():
        set_submodule(model, name, pow2_linear(layer, recipe.group_size))
    return model


@register_export_rule(Pow2Linear)
class Pow2LinearExport(nn.Module):
    """One ``edgeq.LowBitLinear`` node: the op set's packed layout and group formula are the toy's."""

    def __init__(self, layer: Pow2Linear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        m = self.layer
        return torch.ops.edgeq.lowbit_linear(x, m.qweight, m.scales, m.zeros, m.bias, m.bits, m.group_size)


register_layer_format(LayerFormat(
    "toy-pow2", Pow2Linear,
    spec=lambda m: {"kind": "toy-pow2", "in": m.in_features, "out": m.out_features, "group": m.group_size,
                    "bias": m.bias is not None},
    empty=lambda s: Pow2Linear(torch.zeros(s["out"], s["in"] // 2, dtype=torch.uint8),
                               torch.zeros(s["out"], s["in"] // s["group"], dtype=torch.float16),
                               torch.zeros(s["out"], s["in"] // s["group"], dtype=torch.uint8), s["group"],
                               torch.zeros(s["out"]) if s["bias"] else None),
))
register_recipe_type(Pow2Recipe)
register_preset("w4g16-toy-pow2", Pow2Recipe())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


def test_toy_method_runs_from_its_one_module_to_onnxruntime(tmp_path):
    qmodel = edgeq.quantize(_model(), "w4g16-toy-pow2")
    assert [type(m).__name__ for m in qmodel] == ["Pow2Linear", "ReLU", "Pow2Linear"]
    scales = qmodel[0].scales.float()
    assert torch.equal(scales, torch.exp2(torch.round(torch.log2(scales))))  # powers of two, as the recipe says
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    for weight_format, op in (("edgeq", "LowBitLinear"), ("auto", "DequantizeLinear")):
        path = edgeq.export(qmodel, x[:1], tmp_path / f"toy_{weight_format}.onnx", weight_format=weight_format)
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count(op) == 2, ops  # one node per quantized layer: the weights stay 4-bit in the file
        got = ort_session(path).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()


def test_toy_method_saves_and_loads_through_its_layer_format(tmp_path):
    from edgeq.quant.base import layer_formats

    qmodel = edgeq.quantize(_model(), Pow2Recipe(group_size=16))
    fmt = layer_formats()["toy-pow2"]
    rebuilt = fmt.empty(fmt.spec(qmodel[0]))
    rebuilt.load_state_dict(qmodel[0].state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(rebuilt(x), qmodel[0](x))


def test_recipe_declares_calibration_and_the_cli_reads_it():
    """Calibration is passed by the recipe's declaration, never by method name."""
    from edgeq.recipes import resolve_recipe

    assert resolve_recipe("w4g16-toy-pow2").needs_calibration is False
    assert resolve_recipe("w3-lopro").needs_calibration is True
    assert resolve_recipe('{"method": "lopro", "quantizer": "rtn"}').needs_calibration is False
    assert resolve_recipe("w4g128-gptq").needs_calibration and resolve_recipe("w8a8").needs_calibration
    assert not resolve_recipe("w4g128-rtn").needs_calibration and not resolve_recipe("w3-lrqmm").needs_calibration
