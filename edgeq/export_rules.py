"""How each quantized module type leaves PyTorch: a registry from module type to an export rule.

A rule returns a twin of the module (sharing its buffers) whose forward calls torch custom ops
with ONNX translations (``edgeq.opset``), so the exported graph holds one ``edgeq`` node (or a
standard-ONNX form) per layer instead of the unpacking arithmetic. ``edgeq.export`` swaps the
twins in for the duration of the export only.

Every module class defined under ``edgeq.quant`` is a quantized layer edgeq knows; one with no
rule is refused with its path and type rather than exported as whatever its forward traces to.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from edgeq.errors import ExportError
from edgeq.quant import dyadic
from edgeq.quant.embedding import WeightOnlyEmbedding
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.quant.lopro import LoProLinear
from edgeq.quant.lrqmm import LowRankCorrectedLinear
from edgeq.quant.r1svd import decode_factors
from edgeq.quant.w8a8 import QDQConv2d, QDQLinear, _ActQuant
from edgeq.quant.weight_only import WeightOnlyConv2d, WeightOnlyLinear

Rule = Callable[[nn.Module], nn.Module]
_RULES: dict[type, Rule] = {}


def register_export_rule(module_type: type) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        _RULES[module_type] = rule
        return rule

    return deco


def export_rules() -> dict[type, Rule]:
    return dict(_RULES)


def as_is(module: nn.Module) -> nn.Module:
    """For layers whose forward already calls only translated custom ops (QDQ)."""
    return module


_NATIVE = (
    QDQConv2d, QDQLinear, _ActQuant,
    # HAWQ-V3 models export in their QDQ form (``DyadicModel.qdq_module()``);
    # ``edgeq.passes.integerize`` then makes the graph integer-only.
    dyadic.ActFakeQuant, dyadic.QDQWeightLayer,
)
for _native in _NATIVE:
    register_export_rule(_native)(as_is)


class WeightOnlyTwin(nn.Module):
    """A packed weight-only layer's twin: it holds the layer, so its op reads the layer's own
    ``qweight``, ``scales``, ``zeros`` (and ``bias``), ``bits`` and ``group_size``. One subclass per
    layer type: the exporter records the twin's class name in the graph's metadata."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer


class LowBitLinearExport(WeightOnlyTwin):
    """``WeightOnlyLinear`` as one ``edgeq::lowbit_linear`` call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return torch.ops.edgeq.lowbit_linear(x, m.qweight, m.scales, m.zeros, m.bias, m.bits, m.group_size)


class LowBitEmbeddingExport(WeightOnlyTwin):
    """``WeightOnlyEmbedding`` as one ``edgeq::lowbit_embedding`` call: packed rows gathered, then unpacked."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return torch.ops.edgeq.lowbit_embedding(ids, m.qweight, m.scales, m.zeros, m.bits, m.group_size)


class LowBitConv2dExport(WeightOnlyTwin):
    """``WeightOnlyConv2d``: the packed weight dequantized by standard ops (``edgeq::dequantize_packed``)
    feeding a float Conv; the file keeps the weight packed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        w = torch.ops.edgeq.dequantize_packed(m.qweight, m.scales, m.zeros, m.bits, m.group_size)
        w = w.reshape(m.out_channels, m.in_channels // m.groups, *m.kernel_size).to(x.dtype)
        bias = None if m.bias is None else m.bias.to(x.dtype)
        return torch.nn.functional.conv2d(x, w, bias, m.stride, m.padding, m.dilation, m.groups)


class HadamardExport(nn.Module):
    """``OnlineHadamard`` as one ``edgeq.Hadamard`` node (no sign input when the signs are all +1)."""

    def __init__(self, layer: OnlineHadamard):
        super().__init__()
        self.layer = layer
        self.signed = not bool((layer.signs == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return torch.ops.edgeq.hadamard(x, m.signs if self.signed else None, m.block_size)


def _factors_for_export(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [in, r], V [r, out]) with ``x @ U @ V`` the layer's low-rank branch: float16 factors stay
    float16 (exact in the op's cast), others (bf16, int8 with scales) are decoded to float32."""
    lr = decode_factors({"u": layer.u, "v": layer.v, "u_scale": layer.u_scale, "v_scale": layer.v_scale})
    dtype = torch.float16 if layer.u.dtype == torch.float16 and layer.u_scale is None else torch.float32
    return lr.v.T.contiguous().to(dtype), lr.u.T.contiguous().to(dtype)


class LowRankLinearExport(nn.Module):
    """LRQMM's ``LowRankCorrectedLinear`` as one ``edgeq.LowRankLinear`` node."""

    def __init__(self, layer: LowRankCorrectedLinear):
        super().__init__()
        self.layer = layer
        u, v = _factors_for_export(layer)
        self.register_buffer("factor_in", u)
        self.register_buffer("factor_out", v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.layer.core
        return torch.ops.edgeq.lowrank_linear(x, c.qweight, c.scales, c.zeros, self.factor_in, self.factor_out,
                                              c.bias, c.bits, c.group_size)


class LoProExport(nn.Module):
    """``LoProLinear``: Gather (the column permutation) -> edgeq.Hadamard on the low-bit columns ->
    LowBitLinear, plus the salient columns' LowBitLinear and the low-rank branch on the unpermuted
    input as two MatMuls (it reads x, not the rotated columns, so it is not fused into the core)."""

    def __init__(self, layer: LoProLinear):
        super().__init__()
        self.layer = layer
        u, v = _factors_for_export(layer)
        self.register_buffer("factor_in", u)
        self.register_buffer("factor_out", v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, ks = self.layer, self.layer.salient_features
        xp = torch.index_select(x, -1, m.perm)
        rest = torch.ops.edgeq.hadamard(xp[..., ks:], None, m.block_size)
        c = m.core
        y = torch.ops.edgeq.lowbit_linear(rest, c.qweight, c.scales, c.zeros, c.bias, c.bits, c.group_size)
        if m.salient is not None:
            s = m.salient
            y = y + torch.ops.edgeq.lowbit_linear(xp[..., :ks], s.qweight, s.scales, s.zeros, s.bias, s.bits, s.group_size)
        if m.rank:
            y = y + (x @ self.factor_in.to(x.dtype)) @ self.factor_out.to(x.dtype)
        return y if m.bias is None else y + m.bias.to(x.dtype)


register_export_rule(LowRankCorrectedLinear)(LowRankLinearExport)
register_export_rule(LoProLinear)(LoProExport)
register_export_rule(WeightOnlyLinear)(LowBitLinearExport)
register_export_rule(WeightOnlyConv2d)(LowBitConv2dExport)
register_export_rule(WeightOnlyEmbedding)(LowBitEmbeddingExport)
register_export_rule(OnlineHadamard)(HadamardExport)


def is_edgeq_quantized(module: nn.Module) -> bool:
    """Defined under ``edgeq.quant``, or a subclass of a type with a rule (its forward may differ)."""
    return type(module).__module__.startswith("edgeq.quant.") or isinstance(module, tuple(_RULES))


def planned_replacements(model: nn.Module) -> dict[str, nn.Module]:
    """Twins for every quantized module; ExportError for one edgeq knows but cannot export."""
    twins: dict[str, nn.Module] = {}
    skip_under: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip_under):
            continue  # inside a module that exports as a whole
        rule = next((r for t, r in _RULES.items() if type(module) is t), None)
        if rule is None and is_edgeq_quantized(module):
            raise ExportError(f"{name or 'model'} ({type(module).__module__}.{type(module).__name__}) has no export rule")
        if rule is None:
            continue
        twin = rule(module)
        if twin is not module:
            twins[name] = twin
        skip_under.append(name)
    return twins


@contextlib.contextmanager
def export_twins(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Swap each quantized module for its export twin, and back afterwards whatever happens."""
    twins = planned_replacements(model)
    originals = {name: model.get_submodule(name) for name in twins}
    try:
        for name, twin in twins.items():
            _set(model, name, twin)
        yield twins
    finally:
        for name, module in originals.items():
            _set(model, name, module)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise ExportError(f"the whole model ({type(model).__name__}) is a quantized layer: wrap it in a module to export it")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
