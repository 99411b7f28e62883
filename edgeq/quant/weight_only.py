"""The weight-only quantized linear layer: packed low-bit weights, group-wise scales and zero
points. It computes in plain PyTorch and is the reference that export and TVM are compared with.

    W[n, k] = (q[n, k] - zeros[n, k // group_size]) * scales[n, k // group_size]
    y = x @ W.T + bias

``q`` is unsigned in ``[0, 2**bits)`` and packed along k (``edgeq.maths.packing``); ``zeros`` are
unsigned integers (``2**(bits-1)`` for symmetric recipes); ``scales`` are stored in
``scale_dtype`` (float16 by default) and quantizers round them to that dtype *before* choosing
``q``, so that the stored scale is the one the integers were fitted to. Per-channel
quantization is ``group_size == in_features``.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

import edgeq.opset  # noqa: F401  (torch.ops.edgeq.*)
from edgeq.errors import QuantizationError
from edgeq.maths.groups import dequantize_groups
from edgeq.maths.packing import pack, packed_length, unpack
from edgeq.quant.base import EXPORT_RULES_MODULE, LayerFormat, register_export_rule, register_layer_format


@functools.cache
def cuda_matmul():
    """The fused dequantize-matmul ``fn(layer, x) -> y`` for CUDA inputs: the Triton kernel
    (``edgeq.quant.triton_lowbit``) where Triton is installed, else None (dequantize, then matmul).
    Looked up on the first CUDA input, so importing edgeq neither loads Triton nor probes CUDA."""
    if importlib.util.find_spec("triton") is None:
        return None
    from edgeq.quant.triton_lowbit import lowbit_linear

    return lowbit_linear


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
        return dequantize_groups(self.integer_weight(), self.scales, self.zeros, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in a float layer's shape, computed on each access: Hugging Face
        models read their layers' ``weight`` (ViT: ``projection.weight.dtype``)."""
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and cuda_matmul() is not None:
            return cuda_matmul()(self, x)
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_float(self) -> nn.Linear:
        """An ``nn.Linear`` holding the dequantized weight: the same outputs without unpacking on
        every call (for long evaluations)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.qweight.device)
        lin.weight.data = self.dequantized_weight()
        if self.bias is not None:
            lin.bias.data = self.bias.clone()
        return lin

    def weight_bytes(self) -> int:
        """Bytes held for the weight: packed integers, scales and zero points (bias excluded)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bits_per_weight={self.bits_per_weight:.3f}")


class WeightOnlyConv2d(WeightOnlyLinear):
    """A ``Conv2d`` with the same packed buffers: the weight is held flattened as
    [out_channels, in_channels/groups * kh * kw] (the order of ``F.unfold``), so groups run along
    input channel and kernel position exactly as for a linear layer over unfolded patches."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride, padding,
                 dilation, groups: int, bits: int, group_size: int, qweight, scales, zeros, bias=None):
        kh, kw = kernel_size
        super().__init__(in_channels // groups * kh * kw, out_channels, bits, group_size, qweight, scales, zeros, bias)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized_weight().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, w.to(x.dtype), bias, self.stride, self.padding, self.dilation, self.groups)


def flat_weight(layer: nn.Module) -> torch.Tensor:
    """A Linear's or Conv2d's weight as the 2-D [out, in] matrix weight-only methods quantize."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def from_float_layer(layer: nn.Module, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     bits: int) -> WeightOnlyLinear:
    """The weight-only replacement of ``layer`` (nn.Linear or nn.Conv2d) holding the unpacked
    integers ``q`` [out, in] with ``scales``/``zeros`` [out, groups]; the bias stays float."""
    bias = None if layer.bias is None else layer.bias.detach()
    out_features, in_features = q.shape
    group_size = in_features // scales.shape[1]
    packed = pack(q, bits)
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise QuantizationError(f"Conv2d with padding {layer.padding!r}/{layer.padding_mode} is not supported")
        return WeightOnlyConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                                layer.dilation, layer.groups, bits, group_size, packed, scales, zeros, bias)
    return WeightOnlyLinear(in_features, out_features, bits, group_size, packed, scales, zeros, bias)


class WeightOnlyTwin(nn.Module):
    """A packed weight-only layer's twin: it holds the layer, so its op reads the layer's own
    ``qweight``, ``scales``, ``zeros`` (and ``bias``), ``bits`` and ``group_size``. One subclass per
    layer type: the exporter records the twin's class name in the graph's metadata."""
    __module__ = EXPORT_RULES_MODULE

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    @property
    def weight(self) -> torch.Tensor:
        """The layer's dequantized weight by the exportable op (a model may read it while traced,
        e.g. for its dtype: the exporter then drops the unused node)."""
        m = self.layer
        w = torch.ops.edgeq.dequantize_packed(m.qweight, m.scales, m.zeros, m.bits, m.group_size)
        return w.reshape(m.out_channels, m.in_channels // m.groups, *m.kernel_size) if isinstance(m, WeightOnlyConv2d) else w


class LowBitLinearExport(WeightOnlyTwin):
    """``WeightOnlyLinear`` as one ``edgeq::lowbit_linear`` call."""
    __module__ = EXPORT_RULES_MODULE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return torch.ops.edgeq.lowbit_linear(x, m.qweight, m.scales, m.zeros, m.bias, m.bits, m.group_size)


class LowBitConv2dExport(WeightOnlyTwin):
    """``WeightOnlyConv2d``: the packed weight dequantized by standard ops (``edgeq::dequantize_packed``)
    feeding a float Conv; the file keeps the weight packed."""
    __module__ = EXPORT_RULES_MODULE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        w = torch.ops.edgeq.dequantize_packed(m.qweight, m.scales, m.zeros, m.bits, m.group_size)
        w = w.reshape(m.out_channels, m.in_channels // m.groups, *m.kernel_size).to(x.dtype)
        bias = None if m.bias is None else m.bias.to(x.dtype)
        return torch.nn.functional.conv2d(x, w, bias, m.stride, m.padding, m.dilation, m.groups)


register_export_rule(WeightOnlyLinear)(LowBitLinearExport)
register_export_rule(WeightOnlyConv2d)(LowBitConv2dExport)


def weight_only_spec(m: WeightOnlyLinear) -> dict:
    """A saved model's record of a weight-only layer: its kind and shapes (buffers hold the rest)."""
    spec = {"kind": "linear", "in": m.in_features, "out": m.out_features, "bits": m.bits, "group_size": m.group_size,
            "bias": m.bias is not None, "scale_dtype": str(m.scales.dtype).removeprefix("torch.")}
    if isinstance(m, WeightOnlyConv2d):
        spec.update(kind="conv2d", in_channels=m.in_channels, kernel_size=list(m.kernel_size), stride=list(m.stride),
                    padding=list(m.padding), dilation=list(m.dilation), groups=m.groups)
    return spec


def empty_weight_only(spec: dict) -> WeightOnlyLinear:
    """A layer of :func:`weight_only_spec`'s shapes with zero buffers, for a saved state dict to fill."""
    out_f, in_f, bits, g = spec["out"], spec["in"], spec["bits"], spec["group_size"]
    dtype = getattr(torch, spec["scale_dtype"])
    buffers = (torch.zeros(out_f, packed_length(in_f, bits), dtype=torch.uint8), torch.zeros(out_f, in_f // g, dtype=dtype),
               torch.zeros(out_f, in_f // g, dtype=torch.uint8), torch.zeros(out_f) if spec["bias"] else None)
    if spec["kind"] == "conv2d":
        return WeightOnlyConv2d(spec["in_channels"], out_f, tuple(spec["kernel_size"]), spec["stride"], spec["padding"],
                                spec["dilation"], spec["groups"], bits, g, *buffers)
    return WeightOnlyLinear(in_f, out_f, bits, g, *buffers)


register_layer_format(LayerFormat("linear", WeightOnlyLinear, weight_only_spec, empty_weight_only))
register_layer_format(LayerFormat("conv2d", WeightOnlyConv2d, weight_only_spec, empty_weight_only))
