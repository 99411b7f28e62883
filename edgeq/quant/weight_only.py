"""The weight-only quantized linear layer: packed low-bit weights, group-wise scales and zero
points. It computes in plain PyTorch and is the reference that export and TVM are compared with.

    W[n, k] = (q[n, k] - zeros[n, k // group_size]) * scales[n, k // group_size]
    y = x @ W.T + bias

``q`` is unsigned in ``[0, 2**bits)`` and packed along k (``edgeq.quant.packing``); ``zeros`` are
unsigned integers (``2**(bits-1)`` for symmetric recipes); ``scales`` are stored in
``scale_dtype`` (float16 by default) and quantizers round them to that dtype *before* choosing
``q``, so that the stored scale is the one the integers were fitted to. Per-channel
quantization is ``group_size == in_features``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeq.errors import QuantizationError
from edgeq.quant.packing import pack, packed_length, unpack


class WeightOnlyLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        if in_features % group_size:
            raise QuantizationError(f"group size {group_size} does not divide in_features {in_features}")
        groups = in_features // group_size
        expect = {"qweight": (out_features, packed_length(in_features, bits)), "scales": (out_features, groups), "zeros": (out_features, groups)}
        for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros)):
            if tuple(t.shape) != expect[name]:
                raise QuantizationError(f"{name} has shape {tuple(t.shape)}, expected {expect[name]}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.register_buffer("qweight", qweight.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_integers(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, bias=None) -> "WeightOnlyLinear":
        """Build from unpacked integers ``q`` [out, in] (values in [0, 2**bits))."""
        out_features, in_features = q.shape
        group_size = in_features // scales.shape[1]
        return cls(in_features, out_features, bits, group_size, pack(q, bits), scales, zeros, bias)

    def integer_weight(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        q = self.integer_weight().float().reshape(self.out_features, -1, self.group_size)
        w = (q - self.zeros.float().unsqueeze(-1)) * self.scales.float().unsqueeze(-1)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def weight_bytes(self) -> int:
        """Bytes held for the weight: packed integers, scales and zero points (bias excluded)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bits_per_weight={self.bits_per_weight:.3f}")
