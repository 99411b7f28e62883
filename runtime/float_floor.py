"""How exactly a PyTorch float32 reference knows its own output, and what that means for a bar.

An exported model is checked against the PyTorch model's float32 output. That output is itself an
approximation: its distance to a float64 evaluation of the *same* quantized model (the ``floor``)
measures how strongly the model amplifies float32 rounding and summation order. On a healthy
model the floor is ~1e-6 of the output's scale, far below the usual 1e-4 bar; a model broken by
quantization (SmolLM2 W2 RTN: perplexity ~6e5) has a floor of ~1.7e-4, and no float32 runtime
can be required to match PyTorch's particular summation order more closely than that.

The rule (``judge``): the runtime's error against PyTorch float32 must be within
``max(tol, 2 * floor)``, the triangle inequality for a runtime no less accurate than PyTorch,
and its error against the float64 value within ``max(tol, floor)``, i.e. it is indeed no less
accurate (or within the bar of the exact value). Where the floor is below ``tol / 2`` this is
exactly the plain bar.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from edgeq.quant.architectures import NormForm, find_architecture


class InputDtypeRMSNorm(nn.Module):
    """RMSNorm computed in its input's dtype. HF's RMSNorms (LLaMA's, Gemma's (1 + γ) form, ...)
    always compute in float32, so a float64 evaluation swaps them for this one (same weight,
    epsilon and form: ``offset`` adds 1 to γ as Gemma does)."""

    def __init__(self, weight: nn.Parameter, eps: float, offset: bool = False):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.to(x.dtype) + (1 if self.offset else 0)
        return scale * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def causal_lm_logits(model: nn.Module, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float().numpy()


def float64_logits(model: nn.Module, ids: torch.Tensor) -> np.ndarray:
    """A Hugging Face decoder (quantized or not; its norms found by ``edgeq.quant.architectures``)
    evaluated in float64 on a copy; rotary cos/sin stay float32 (HF computes them so), every
    matmul, norm and softmax is float64. A quantized embedding returns float32 rows (exact
    dequantized values): they are widened, or the whole model would run in float32 again."""
    model = copy.deepcopy(model).double()
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.double())
    arch = find_architecture(model)
    offset = arch is not None and arch.norm_form is NormForm.RMS_OFFSET
    for name, norm in (arch.rms_norms(model) if arch else {}).items():
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        model.set_submodule(name, InputDtypeRMSNorm(norm.weight, eps, offset))
    return causal_lm_logits(model, ids)


@dataclass
class FloorCheck:
    err: float  # max |runtime - reference float32| / max |reference|
    floor: float  # max |reference float32 - reference float64| / max |reference|
    err_vs_float64: float  # max |runtime - reference float64| / max |reference|
    tol: float  # the bar applied to err: max(bar, 2 * floor)
    bar: float

    @property
    def ok(self) -> bool:
        return self.err <= self.tol and self.err_vs_float64 <= max(self.bar, self.floor)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def judge(got: np.ndarray, ref32: np.ndarray, ref64: np.ndarray, bar: float = 1e-4) -> FloorCheck:
    scale = float(np.abs(ref32).max())

    def rel(a, b):  # NaN or inf anywhere is an infinite error (max(bar, nan) would be bar)
        diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        return float(diff.max() / scale) if np.isfinite(diff).all() and np.isfinite(scale) else float("inf")

    floor = rel(ref32, ref64)
    return FloorCheck(rel(got, ref32), floor, rel(got, ref64), max(bar, 2 * floor), bar)
