"""``OnlineHadamard``: a rotation applied at run time, where it cannot be folded into weights
(the matrices and the fast transform are ``edgeq.maths.hadamard``)."""

from __future__ import annotations

import torch
from torch import nn

import edgeq.opset  # noqa: F401  (torch.ops.edgeq.*)
from edgeq.errors import QuantizationError
from edgeq.maths.hadamard import hadamard_factors, hadamard_matrix, hadamard_transform
from edgeq.quant.base import EXPORT_RULES_MODULE, register_export_rule


class OnlineHadamard(nn.Module):
    """Rotate the last axis at run time where the rotation cannot be folded into weights.

    ``y = hadamard_transform(x * signs)`` applied independently to each block of ``block_size``
    elements of the last axis (``block_size == size`` rotates the whole axis; ``head_dim``
    rotates per head). ``signs`` is all ones for a plain Hadamard. The attributes are plain
    (size, block_size, factors, signs) so an exporter can emit one ``edgeq.Hadamard`` op.
    """

    def __init__(self, size: int, block_size: int | None = None, signs: torch.Tensor | None = None):
        super().__init__()
        block_size = block_size or size
        if size % block_size:
            raise QuantizationError(f"Hadamard block size {block_size} does not divide the axis size {size}")
        self.size, self.block_size = size, block_size
        self.factors = hadamard_factors(block_size)
        self.register_buffer("signs", torch.ones(size) if signs is None else signs.detach().float().clone())

    def matrix(self) -> torch.Tensor:
        """The dense [size, size] matrix M with ``forward(x) == x @ M``."""
        block = hadamard_matrix(self.block_size, torch.float64)
        dense = torch.block_diag(*([block] * (self.size // self.block_size)))
        return (self.signs.double().unsqueeze(1) * dense).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            raise QuantizationError(f"OnlineHadamard of size {self.size} got an input with last axis {x.shape[-1]}")
        x = x * self.signs.to(x.dtype)
        lead = x.shape[:-1]
        blocks = x.reshape(*lead, self.size // self.block_size, self.block_size)
        return hadamard_transform(blocks, self.factors).reshape(*lead, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, block_size={self.block_size}, factors={self.factors}"


class HadamardExport(nn.Module):
    """``OnlineHadamard`` as one ``edgeq.Hadamard`` node (no sign input when the signs are all +1)."""
    __module__ = EXPORT_RULES_MODULE

    def __init__(self, layer: OnlineHadamard):
        super().__init__()
        self.layer = layer
        self.signed = not bool((layer.signs == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return torch.ops.edgeq.hadamard(x, m.signs if self.signed else None, m.block_size)


register_export_rule(OnlineHadamard)(HadamardExport)
