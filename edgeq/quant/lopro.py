"""LoPRo: low-rank plus permuted, block-rotated residual, for 2-3 bit weight-only quantization.

For a linear layer ``y = x @ W.T`` with calibration Hessian ``H = sum x^T x``::

    W = L + R                      L = U V from R1SVD (rank ``rank``)
    P  = columns of R sorted by importance (H's diagonal; |R_j| without data), descending
    R P = [S | T]                  S: the ``salient_blocks`` most important blocks of ``block_size``
    T' = T · blockdiag(Hd, ..., Hd)  Hd: normalized Walsh-Hadamard of size ``block_size``
    T' -> low-bit (GPTQ in this basis with H' = B^T (P^T H P) B, or RTN); S -> ``salient_bits`` RTN

Sorting puts columns of similar importance in the same Hadamard block, so the rotation spreads
a block's outliers over columns of like scale instead of mixing large with small. In GPTQ the
salient columns come last and stay in float during the solve: they absorb the compensating
updates of the low-bit columns, then are rounded at ``salient_bits`` (8 by default).

Inference (:class:`LoProLinear`)::

    xp = x[..., perm]
    y  = core(block_hadamard(xp[..., ks:])) + salient(xp[..., :ks]) + (x @ v.T) @ u.T + bias

Bits per weight count everything held: the packed core with its scales and zeros, the salient
block's integers and scales, the low-rank factors and the permutation (``in_features`` int16
values; the exported Gather reads them as int32).

Rank: ``rank`` is fixed, or with ``rank_min_gain > 0`` an upper bound, chosen per layer by the
R1SVD residual score: a component is kept only while it lowers the error of rounding the residual
(at the core's grid, columns weighted by the Hessian diagonal) by at least that fraction.

Defaults (rank 8 with int8 factors, Hadamard blocks of 32, one 8-bit salient block of 32
columns, group 32) were chosen by ``benchmarks/lopro_knobs.py`` on real SmolLM2-135M layers: the
held-out output error ``|X (W - Ŵ)^T| / |X W^T|`` divided by GPTQ's at the same bits per weight
(interpolated between GPTQ g64/g32/g16), averaged over 3 and 2 bits. The old defaults (fp16
rank-8 factors, a 64-column salient block, group 64) spent 0.8-0.9 bits per weight more than GPTQ
g64 for 1.04 (W3) / 1.13 (W2) times GPTQ's error at those bits; these spend ~0.85 more for
0.95 / 1.02. The four best settings lie within 0.01 of each other (0.979-0.986, mean of W3 and
W2; rotation alone at group 16 or 64 is at the top), which three layers cannot separate; the
defaults are the one of them that keeps every LoPRo part (low-rank branch and salient block).
See benchmarks/RESULTS.md, "LoPRo knob sweep".
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
from edgeq.maths.groups import check_grid, quantize_groups
from edgeq.maths.hadamard import hadamard_matrix, hadamard_transform
from edgeq.quant.base import (EXPORT_RULES_MODULE, LayerFormat, calib_batches, hf_conv1d_as_linear, quantizable_layers, register_export_rule,
                              register_layer_format, register_quantizer, set_submodule)
from edgeq.quant.gptq import gptq_quantize_model, gptq_solve
from edgeq.quant.r1svd import (FACTOR_DTYPES, LowRankTwin, compress_factors, decode_factors, empty_factors,
                               factor_bytes, factors_spec, r1svd)
from edgeq.quant.weight_only import WeightOnlyLinear, empty_weight_only, weight_only_spec
from edgeq.recipes import Recipe, register_preset, register_recipe_type


def block_hadamard(x: torch.Tensor, block_size: int, inverse: bool = False) -> torch.Tensor:
    """``x`` [..., k] times blockdiag(Hd, ...) (or its transpose) along the last axis; ``Hd`` is
    ``edgeq.maths.hadamard``'s orthogonal matrix of order ``block_size`` (2^k times 12/20/28)."""
    shape = x.shape
    blocks = x.reshape(*shape[:-1], shape[-1] // block_size, block_size)
    if inverse:
        return (blocks @ hadamard_matrix(block_size, x.dtype).T).reshape(shape)
    return hadamard_transform(blocks).reshape(shape)


def rtn_linear(w: torch.Tensor, bits: int, group_size: int) -> WeightOnlyLinear:
    gq = quantize_groups(w, bits, group_size)
    return WeightOnlyLinear.from_integers(gq.q, gq.scales, gq.zeros, bits)


class LoProLinear(nn.Module):
    """The LoPRo inference form. Buffers: ``perm`` int16 [in_features]; ``u`` [out, r], ``v``
    [r, in] (plus ``u_scale``/``v_scale`` for int8 factors); ``bias``. Submodules: ``core`` (a
    :class:`WeightOnlyLinear` on the rotated non-salient inputs) and ``salient`` (a
    :class:`WeightOnlyLinear` on the first ``salient_features`` permuted inputs, or None)."""

    def __init__(self, perm: torch.Tensor, block_size: int, core: WeightOnlyLinear,
                 salient: WeightOnlyLinear | None, factors: dict[str, torch.Tensor], bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = perm.numel(), core.out_features
        self.block_size = block_size
        self.salient_features = 0 if salient is None else salient.in_features
        if self.salient_features + core.in_features != self.in_features:
            raise QuantizationError(
                f"LoPRo parts cover {self.salient_features}+{core.in_features} inputs, expected {self.in_features}")
        if self.in_features > torch.iinfo(torch.int16).max:
            raise QuantizationError(f"LoPRo permutes at most {torch.iinfo(torch.int16).max} inputs, got {self.in_features}")
        self.register_buffer("perm", perm.to(torch.int16).contiguous())
        self.core, self.salient = core, salient
        for name in ("u", "v", "u_scale", "v_scale"):
            self.register_buffer(name, factors.get(name))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = x[..., self.perm.long()]
        ks = self.salient_features
        y = self.core(block_hadamard(xp[..., ks:], self.block_size))
        if self.salient is not None:
            y = y + self.salient(xp[..., :ks])
        if self.rank:
            lr = decode_factors({"u": self.u, "v": self.v, "u_scale": self.u_scale, "v_scale": self.v_scale})
            y = y + F.linear(F.linear(x, lr.v.to(x.dtype)), lr.u.to(x.dtype))
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this layer computes with, in the original input order."""
        rest = block_hadamard(self.core.dequantized_weight(), self.block_size, inverse=True)
        parts = [rest] if self.salient is None else [self.salient.dequantized_weight(), rest]
        w = torch.empty(self.out_features, self.in_features)
        w[:, self.perm.long()] = torch.cat(parts, dim=1)
        lr = decode_factors({"u": self.u, "v": self.v, "u_scale": self.u_scale, "v_scale": self.v_scale})
        return w + lr.matrix()

    def weight_bytes(self) -> int:
        """Every byte held: core, salient block, permutation and low-rank factors."""
        held = self.core.weight_bytes() + (0 if self.salient is None else self.salient.weight_bytes()) + self.index_bytes()
        return held + factor_bytes({"u": self.u, "v": self.v, "u_scale": self.u_scale, "v_scale": self.v_scale})

    def index_bytes(self) -> int:
        return self.perm.numel() * self.perm.element_size()

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"block_size={self.block_size}, salient_features={self.salient_features}, "
                f"bits_per_weight={self.bits_per_weight:.3f}")


@dataclass
class LoProBasis:
    """What LoPRo solves, before its solve: the permutation, the stored low-rank factors, the
    rotated low-bit columns ``rest`` [out, k - ks], the salient columns [out, ks] and the Hessian in
    the solve's basis ``[rotated rest | salient]`` (None without data)."""

    perm: torch.Tensor
    factors: dict[str, torch.Tensor]
    rest: torch.Tensor
    salient: torch.Tensor
    hessian: torch.Tensor | None


def lopro_basis(weight: torch.Tensor, hessian: torch.Tensor | None, *, bits: int, group_size: int, rank: int,
                block_size: int, salient_blocks: int, factor_dtype: str = "float16", power_iters: int = 2,
                seed: int = 0, rank_min_gain: float = 0.0) -> LoProBasis:
    """Low-rank split, permutation and block rotation of one weight [out, in] (module docstring)."""
    w = weight.detach().float()
    n, k = w.shape
    if k % block_size:
        raise QuantizationError(f"block size {block_size} does not divide in_features {k}")
    hadamard_matrix(block_size)  # raises for sizes with no Hadamard matrix
    ks = salient_blocks * block_size
    if ks >= k:
        raise QuantizationError(f"{salient_blocks} salient blocks of {block_size} leave no low-bit columns of {k}")
    check_grid(bits, group_size, k - ks, "LoPRo low-bit columns")
    residual_error = None
    if rank_min_gain > 0:
        col_weight = torch.diag(hessian).float() if hessian is not None else torch.ones(k)

        def residual_error(res: torch.Tensor) -> float:  # the residual's rounding error at the core grid
            return float(((quantize_groups(res, bits, group_size).dequantize() - res).square() * col_weight).sum())

    factors = r1svd(w, rank, power_iters=power_iters, seed=seed, residual_error=residual_error,
                    rel_improvement=rank_min_gain)
    buffers, lr = compress_factors(factors, factor_dtype)
    r = w - lr.matrix()  # quantize the residual of the factors as stored
    importance = torch.diag(hessian) if hessian is not None else r.square().sum(dim=0)
    perm = torch.argsort(importance, descending=True, stable=True)
    rp = r[:, perm]
    h_rot = None if hessian is None else solve_basis_hessian(hessian, perm, block_size, ks)
    return LoProBasis(perm, buffers, block_hadamard(rp[:, ks:], block_size), rp[:, :ks], h_rot)


def solve_basis_hessian(hessian: torch.Tensor, perm: torch.Tensor, block_size: int, ks: int) -> torch.Tensor:
    """``hessian`` in the basis of LoPRo's solve, ``[rotated rest | salient]``: ``H' = Bᵀ Hp B``
    with ``Hp`` permuted by ``perm`` and ``B = blockdiag(Hd..., I)``."""
    k = perm.numel()
    hp = hessian.float()[perm][:, perm]
    basis = torch.zeros(k, k)
    basis[ks:, :k - ks] = torch.block_diag(*[hadamard_matrix(block_size)] * ((k - ks) // block_size))
    basis[torch.arange(ks), torch.arange(k - ks, k)] = 1.0
    return basis.T @ hp @ basis


def lopro_linear(weight: torch.Tensor, hessian: torch.Tensor | None, *, bits: int, group_size: int, rank: int,
                 block_size: int, salient_blocks: int, salient_bits: int = 8, factor_dtype: str = "float16",
                 quantizer: str = "gptq", power_iters: int = 2, clip_steps: int = 0, bias=None,
                 seed: int = 0, rank_min_gain: float = 0.0) -> LoProLinear:
    """Decompose and quantize one weight [out, in]; ``hessian`` [in, in] (None: RTN, weight-norm importance)."""
    if quantizer == "gptq" and hessian is None:
        raise QuantizationError("LoPRo with quantizer='gptq' needs calibration data (a Hessian)")
    b = lopro_basis(weight, hessian, bits=bits, group_size=group_size, rank=rank, block_size=block_size,
                    salient_blocks=salient_blocks, factor_dtype=factor_dtype, power_iters=power_iters, seed=seed,
                    rank_min_gain=rank_min_gain)
    ks = b.salient.shape[1]
    salient_w = b.salient
    if quantizer == "gptq":
        # GPTQ in this order, the salient columns last and left in float to absorb the updates
        gq, salient_w = gptq_solve(torch.cat([b.rest, b.salient], dim=1), b.hessian.double(), bits, group_size,
                                   n_quant=b.rest.shape[1], clip_steps=clip_steps)
        core = WeightOnlyLinear.from_integers(gq.q, gq.scales, gq.zeros, bits)
    elif quantizer == "rtn":
        core = rtn_linear(b.rest, bits, group_size)
    else:
        raise QuantizationError(f"LoPRo quantizer must be 'gptq' or 'rtn', got {quantizer!r}")
    salient = rtn_linear(salient_w, salient_bits, ks) if ks else None
    return LoProLinear(b.perm, block_size, core, salient, b.factors, bias)


@dataclass(frozen=True)
class LoProRecipe(Recipe):
    """LoPRo (see module docstring). ``quantizer`` is "gptq" (needs ``calib``) or "rtn"."""

    METHOD = "lopro"
    bits: int = 3
    group_size: int = 32
    rank: int = 8
    block_size: int = 32
    salient_blocks: int = 1
    salient_bits: int = 8
    factor_dtype: str = "int8"
    quantizer: str = "gptq"
    power_iters: int = 2
    clip_steps: int = 20
    rank_min_gain: float = 0.0

    @property
    def needs_calibration(self) -> bool:
        return self.quantizer == "gptq"


def _lopro_layer(name: str, layer: nn.Linear, hessian: torch.Tensor | None, recipe: LoProRecipe) -> LoProLinear:
    try:
        return lopro_linear(layer.weight, hessian, bits=recipe.bits, group_size=recipe.group_size, rank=recipe.rank,
                            block_size=recipe.block_size, salient_blocks=recipe.salient_blocks,
                            salient_bits=recipe.salient_bits, factor_dtype=recipe.factor_dtype,
                            quantizer=recipe.quantizer, power_iters=recipe.power_iters,
                            clip_steps=recipe.clip_steps, bias=layer.bias, rank_min_gain=recipe.rank_min_gain)
    except QuantizationError as e:
        raise QuantizationError(f"layer {name}: {e}") from None


@register_quantizer(LoProRecipe)
def quantize_lopro(model: nn.Module, recipe: LoProRecipe, calib=None) -> nn.Module:
    """GPTQ flavour: Hessians come block by block from the already quantized earlier layers
    (``edgeq.quant.gptq.gptq_quantize_model``), each layer solved by :func:`lopro_linear`."""
    if recipe.factor_dtype not in FACTOR_DTYPES:
        raise QuantizationError(f"recipe lopro: unknown factor_dtype {recipe.factor_dtype!r}; choose one of {FACTOR_DTYPES}")
    if recipe.quantizer not in ("gptq", "rtn"):
        raise QuantizationError(f"recipe lopro: quantizer must be 'gptq' or 'rtn', got {recipe.quantizer!r}")
    batches = calib_batches(calib)
    if recipe.quantizer == "gptq" and not batches:
        raise QuantizationError("recipe lopro with quantizer='gptq' needs calibration data: pass calib=<sample inputs>")
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    hf_conv1d_as_linear(model, recipe)  # GPT-2's Conv1D projections are Linears too
    layers = quantizable_layers(model, recipe, kinds=(nn.Linear,))
    if recipe.quantizer == "gptq":
        gptq_quantize_model(model, layers, recipe, batches, quantize_layer=_lopro_layer)
    else:
        for name, layer in tqdm(layers.items(), desc="lopro", leave=False):
            set_submodule(model, name, _lopro_layer(name, layer, None, recipe))
    model.edgeq_recipe = recipe
    model.edgeq_quantize_seconds = time.perf_counter() - start
    return model


register_recipe_type(LoProRecipe)
register_preset("w3-lopro", LoProRecipe(bits=3, skip=("lm_head",)))
register_preset("w2-lopro", LoProRecipe(bits=2, skip=("lm_head",)))
# permuted block-Hadamard GPTQ alone (no low-rank branch, no salient block): the issue-#20 budgets
register_preset("w3g192-lopro-rank0", LoProRecipe(bits=3, group_size=192, rank=0, block_size=64, salient_blocks=0,
                                                  skip=("lm_head",)))
register_preset("w2g64-lopro-rank0", LoProRecipe(bits=2, group_size=64, rank=0, block_size=64, salient_blocks=0,
                                                 skip=("lm_head",)))


# --- export ---------------------------------------------------------------------------------

class LoProExport(LowRankTwin):
    """``LoProLinear``: Gather (the column permutation) -> edgeq.Hadamard on the low-bit columns ->
    LowBitLinear, plus the salient columns' LowBitLinear and the low-rank branch on the unpermuted
    input as two MatMuls (it reads x, not the rotated columns, so it is not fused into the core)."""
    __module__ = EXPORT_RULES_MODULE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, ks = self.layer, self.layer.salient_features
        xp = torch.index_select(x, -1, m.perm.to(torch.int32))
        rest = torch.ops.edgeq.hadamard(xp[..., ks:], None, m.block_size)
        c = m.core
        y = torch.ops.edgeq.lowbit_linear(rest, c.qweight, c.scales, c.zeros, c.bias, c.bits, c.group_size)
        if m.salient is not None:
            s = m.salient
            y = y + torch.ops.edgeq.lowbit_linear(xp[..., :ks], s.qweight, s.scales, s.zeros, s.bias, s.bits, s.group_size)
        if m.rank:
            y = y + (x @ self.factor_in.to(x.dtype)) @ self.factor_out.to(x.dtype)
        return y if m.bias is None else y + m.bias.to(x.dtype)


register_export_rule(LoProLinear)(LoProExport)


# --- saved models ---------------------------------------------------------------------------

def _lopro_spec(m: LoProLinear) -> dict:
    return {"kind": "lopro", "in": m.in_features, "block_size": m.block_size, "core": weight_only_spec(m.core),
            "salient": None if m.salient is None else weight_only_spec(m.salient), "factors": factors_spec(m),
            "bias": m.bias is not None}


def _empty_lopro(spec: dict) -> LoProLinear:
    core = empty_weight_only(spec["core"])
    salient = None if spec["salient"] is None else empty_weight_only(spec["salient"])
    bias = torch.zeros(core.out_features) if spec["bias"] else None
    return LoProLinear(torch.zeros(spec["in"], dtype=torch.int16), spec["block_size"], core, salient,
                       empty_factors(spec["factors"]), bias)


register_layer_format(LayerFormat("lopro", LoProLinear, _lopro_spec, _empty_lopro))
