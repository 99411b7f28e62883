"""Group-wise 2/3/4/8-bit dequantize-matmul for CUDA GPUs in Triton.

``lowbit_linear(layer, x)`` computes ``WeightOnlyLinear``'s forward from its packed buffers: each
program owns a ``BLOCK_M × BLOCK_N`` tile of the output and walks K, unpacking the weight bytes
in registers (``edgeq.maths.packing``'s layout), dequantizing with the group's scale and zero
point, and accumulating ``X · Wᵀ`` in float32. The float weight never exists in memory.

``WeightOnlyLinear`` imports this module on its first CUDA input when Triton is installed
(``edgeq.quant.weight_only.cuda_matmul``). On CPU it runs under ``TRITON_INTERPRET=1`` (set
before import), which is how it is tested.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgeq.quant.weight_only import WeightOnlyLinear


@triton.jit
def _unpack(qweight_ptr, stride_qn, offs_n, offs_k, mask, BITS: tl.constexpr):
    """The unsigned integers at rows ``offs_n``, columns ``offs_k`` of the packed weight (int32)."""
    rows = qweight_ptr + offs_n[:, None] * stride_qn
    if BITS == 3:
        unit = offs_k // 8
        j = offs_k % 8
        first = unit * 3 + (j * 3) // 8
        second = unit * 3 + tl.minimum((j * 3) // 8 + 1, 2)
        lo = tl.load(rows + first[None, :], mask=mask, other=0).to(tl.int32)
        hi = tl.load(rows + second[None, :], mask=mask, other=0).to(tl.int32)
        return ((lo | (hi << 8)) >> ((j * 3) % 8)[None, :]) & 7
    per_byte: tl.constexpr = 8 // BITS
    byte = tl.load(rows + (offs_k // per_byte)[None, :], mask=mask, other=0).to(tl.int32)
    return (byte >> ((offs_k % per_byte) * BITS)[None, :]) & ((1 << BITS) - 1)


@triton.jit
def _lowbit_matmul_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, bias_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=x_mask, other=0.0).to(tl.float32)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        q = _unpack(qweight_ptr, stride_qn, offs_n, offs_k, w_mask, BITS)
        g = offs_k // GROUP
        scale = tl.load(scales_ptr + offs_n[:, None] * stride_sn + g[None, :], mask=w_mask, other=0.0).to(tl.float32)
        zero = tl.load(zeros_ptr + offs_n[:, None] * stride_zn + g[None, :], mask=w_mask, other=0).to(tl.int32)
        w = (q - zero).to(tl.float32) * scale
        acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc, mask=y_mask)


def lowbit_linear(layer: WeightOnlyLinear, x: torch.Tensor, block_m: int = 16, block_n: int = 32,
                  block_k: int = 32) -> torch.Tensor:
    """``layer(x)`` computed by the Triton kernel (x ``[..., in_features]``; any float dtype)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layer.in_features).contiguous()
    m, k = x2.shape
    n = layer.out_features
    y = torch.empty((m, n), dtype=torch.float32, device=x.device)
    bias = layer.bias if layer.bias is not None else y  # unused when HAS_BIAS is false
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _lowbit_matmul_kernel[grid](
        x2, layer.qweight, layer.scales, layer.zeros, bias, y,
        m, n, k,
        x2.stride(0), layer.qweight.stride(0), layer.scales.stride(0), layer.zeros.stride(0), y.stride(0),
        BITS=layer.bits, GROUP=layer.group_size, HAS_BIAS=layer.bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return y.to(x.dtype).reshape(*lead, n)

