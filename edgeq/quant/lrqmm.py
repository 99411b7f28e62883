"""LRQMM: data-free low-rank compensation of the quantization residual.

Weight side (a recipe on any model's ``nn.Linear`` layers)::

    W = dequant(Q(W)) + E,   E ≈ U V  (rank r, by R1SVD of the residual E)
    y = x @ dequant(Q(W)).T + (x @ V.T) @ U.T

Activation side, for a quantized matmul ``A @ B`` with both operands quantized::

    A @ B ≈ Â @ B̂ + (U_A V_A) @ B̂ + Â @ (U_B V_B),   Â = dequant(Q(A)), E_A = A - Â ≈ U_A V_A

the two extra terms are rank-r products (matrix-vector work), computed at run time without
data. How much they recover depends on how much of the residual's energy the top r singular
directions hold: rounding noise on an unstructured matrix is nearly full rank, so there the gain
is small; clipped outliers and structured residuals compress well (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import edgeq.opset  # noqa: F401  (torch.ops.edgeq.*)
from edgeq.errors import QuantizationError
from edgeq.maths.groups import quantize_groups
from edgeq.quant.base import (EXPORT_RULES_MODULE, LayerFormat, hf_conv1d_as_linear, quantizable_layers, register_export_rule,
                              register_layer_format, register_quantizer, set_submodule)
from edgeq.quant.r1svd import (FACTOR_DTYPES, LowRank, LowRankTwin, compress_factors, decode_factors, empty_factors,
                               factor_bytes, factors_spec, r1svd)
from edgeq.quant.weight_only import WeightOnlyLinear, empty_weight_only, weight_only_spec
from edgeq.recipes import Recipe, register_preset, register_recipe_type


class LowRankCorrectedLinear(nn.Module):
    """A :class:`WeightOnlyLinear` core plus a low-rank branch: ``y = core(x) + (x @ v.T) @ u.T``.

    Buffers: ``u`` [out_features, r], ``v`` [r, in_features] in float16/bfloat16/float32, or int8
    with ``u_scale`` [r] (per column of u) and ``v_scale`` [r] (per row of v), float16.
    """

    def __init__(self, core: WeightOnlyLinear, factors: dict[str, torch.Tensor]):
        super().__init__()
        u, v = factors["u"], factors["v"]
        if u.shape != (core.out_features, v.shape[0]) or v.shape[1] != core.in_features:
            raise QuantizationError(
                f"low-rank factors u{tuple(u.shape)} v{tuple(v.shape)} do not fit a "
                f"{core.in_features}->{core.out_features} layer"
            )
        self.core = core
        self.in_features, self.out_features = core.in_features, core.out_features
        for name in ("u", "v", "u_scale", "v_scale"):
            self.register_buffer(name, factors.get(name))

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def factors(self) -> LowRank:
        return decode_factors({"u": self.u, "v": self.v, "u_scale": self.u_scale, "v_scale": self.v_scale})

    def dequantized_weight(self) -> torch.Tensor:
        return self.core.dequantized_weight() + self.factors().matrix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lr = self.factors()
        return self.core(x) + F.linear(F.linear(x, lr.v.to(x.dtype)), lr.u.to(x.dtype))

    def weight_bytes(self) -> int:
        return self.core.weight_bytes() + factor_bytes(
            {"u": self.u, "v": self.v, "u_scale": self.u_scale, "v_scale": self.v_scale})

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, factor_dtype={self.u.dtype}, bits_per_weight={self.bits_per_weight:.3f}"


def lrqmm_linear(linear: nn.Linear, bits: int, group_size: int, rank: int, *, power_iters: int = 2,
                 factor_dtype: str = "float16", seed: int = 0, name: str = "weight") -> LowRankCorrectedLinear:
    """RTN core (``edgeq.maths.groups``, asymmetric) plus R1SVD factors of its residual."""
    w = linear.weight.detach().float()
    gq = quantize_groups(w, bits, group_size, layer=name)
    core = WeightOnlyLinear.from_integers(gq.q, gq.scales, gq.zeros, bits, linear.bias)
    lr = r1svd(w - core.dequantized_weight(), rank, power_iters=power_iters, seed=seed)
    buffers, _ = compress_factors(lr, factor_dtype)
    return LowRankCorrectedLinear(core, buffers)


@dataclass(frozen=True)
class LRQMMRecipe(Recipe):
    """Weight-only RTN (asymmetric, group-wise) plus a rank-``rank`` correction of the residual,
    factors stored as ``factor_dtype``. Data-free: ``calib`` is ignored."""

    METHOD = "lrqmm"
    bits: int = 4
    group_size: int = 128
    rank: int = 16
    power_iters: int = 2
    factor_dtype: str = "float16"


@register_quantizer(LRQMMRecipe)
def quantize_lrqmm(model: nn.Module, recipe: LRQMMRecipe, calib=None) -> nn.Module:
    if recipe.factor_dtype not in FACTOR_DTYPES:
        raise QuantizationError(f"recipe lrqmm: unknown factor_dtype {recipe.factor_dtype!r}; choose one of {FACTOR_DTYPES}")
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    hf_conv1d_as_linear(model, recipe)  # GPT-2's Conv1D projections are Linears too
    layers = quantizable_layers(model, recipe, kinds=(nn.Linear,))
    for name, layer in tqdm(layers.items(), desc="lrqmm", leave=False):
        set_submodule(model, name, lrqmm_linear(layer, recipe.bits, recipe.group_size, recipe.rank, name=name,
                                                power_iters=recipe.power_iters, factor_dtype=recipe.factor_dtype))
    model.edgeq_recipe = recipe
    model.edgeq_quantize_seconds = time.perf_counter() - start
    return model


# --- activation side: quantized matmul with low-rank residual compensation -----------------

def quantize_rows(a: torch.Tensor, bits: int, clip: float = 1.0) -> torch.Tensor:
    """Symmetric per-row fake quantization (dequantized values); ``clip`` scales the row range."""
    qmax = 2 ** (bits - 1) - 1
    scale = (a.abs().amax(dim=1, keepdim=True) * clip / qmax).clamp_min(1e-12)
    return torch.round(a / scale).clamp(-qmax, qmax) * scale


def quantized_matmul(a: torch.Tensor, b: torch.Tensor, bits: int, clip: float = 1.0) -> torch.Tensor:
    """Direct quantized matmul: A per row, B per column, symmetric ``bits``-bit."""
    return quantize_rows(a, bits, clip) @ quantize_rows(b.T, bits, clip).T


def lrqmm_matmul(a: torch.Tensor, b: torch.Tensor, bits: int, rank: int, *, power_iters: int = 2,
                 clip: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``A @ B`` from quantized operands plus rank-``rank`` compensation of both residuals."""
    a_hat = quantize_rows(a, bits, clip)
    b_hat = quantize_rows(b.T, bits, clip).T
    ea = r1svd(a - a_hat, rank, power_iters=power_iters, seed=seed)
    eb = r1svd(b - b_hat, rank, power_iters=power_iters, seed=seed + 1)
    return a_hat @ b_hat + ea.u @ (ea.v @ b_hat) + (a_hat @ eb.u) @ eb.v


register_recipe_type(LRQMMRecipe)
# group 64: SmolLM2's 576 input features are not a multiple of 128
register_preset("w4-lrqmm", LRQMMRecipe(bits=4, group_size=64, rank=16, skip=("lm_head",)))
register_preset("w3-lrqmm", LRQMMRecipe(bits=3, group_size=64, rank=16, skip=("lm_head",)))
register_preset("w2-lrqmm", LRQMMRecipe(bits=2, group_size=64, rank=32, skip=("lm_head",)))


# --- export ---------------------------------------------------------------------------------

class LowRankLinearExport(LowRankTwin):
    """LRQMM's ``LowRankCorrectedLinear`` as one ``edgeq.LowRankLinear`` node."""
    __module__ = EXPORT_RULES_MODULE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.layer.core
        return torch.ops.edgeq.lowrank_linear(x, c.qweight, c.scales, c.zeros, self.factor_in, self.factor_out,
                                              c.bias, c.bits, c.group_size)


register_export_rule(LowRankCorrectedLinear)(LowRankLinearExport)


# --- saved models ---------------------------------------------------------------------------

def _lrqmm_spec(m: LowRankCorrectedLinear) -> dict:
    return {"kind": "lrqmm", "core": weight_only_spec(m.core), "factors": factors_spec(m)}


def _empty_lrqmm(spec: dict) -> LowRankCorrectedLinear:
    return LowRankCorrectedLinear(empty_weight_only(spec["core"]), empty_factors(spec["factors"]))


register_layer_format(LayerFormat("lrqmm", LowRankCorrectedLinear, _lrqmm_spec, _empty_lrqmm))
