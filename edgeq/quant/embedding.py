"""A weight-only quantized embedding table, and tying it with a quantized ``lm_head``.

The table uses the ``WeightOnlyLinear`` layout (rows = tokens, packed along the hidden axis,
group-wise scales and zero points): a lookup gathers packed rows and dequantizes them. An LLM
whose ``lm_head`` is tied to its embedding keeps one packed table for both, so the exported file
holds the (largest) matrix once, at low bits.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.maths.groups import dequantize_packed
from edgeq.quant.architectures import find_architecture
from edgeq.quant.base import EXPORT_RULES_MODULE, register_export_rule
from edgeq.quant.weight_only import WeightOnlyLinear, WeightOnlyTwin


class WeightOnlyEmbedding(nn.Module):
    """``E[t] = (q[t] - zeros[t, g]) * scales[t, g] * output_scale``; shares buffers with ``table``.

    ``output_scale`` is the architecture's embedding multiplier (Gemma: √hidden, applied inside
    HF's embedding module, so the replacement must apply it too); 1 elsewhere."""

    def __init__(self, table: WeightOnlyLinear, output_scale: float = 1.0):
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.bits, self.group_size = table.bits, table.group_size
        self.output_scale = output_scale
        self.register_buffer("qweight", table.qweight)
        self.register_buffer("scales", table.scales)
        self.register_buffer("zeros", table.zeros)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = dequantize_packed(self.qweight[ids], self.scales[ids], self.zeros[ids], self.bits, self.group_size)
        return rows * self.output_scale if self.output_scale != 1.0 else rows

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}"


def rtn_table(weight: torch.Tensor, bits: int, group_size: int, bias: torch.Tensor | None = None) -> WeightOnlyLinear:
    """Asymmetric min/max round-to-nearest of a ``[rows, K]`` matrix into a ``WeightOnlyLinear``.

    Scales are rounded to float16 before the integers are chosen (the layer contract)."""
    w = weight.detach().float().reshape(weight.shape[0], -1, group_size)
    lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    top = (1 << bits) - 1
    scales = ((hi - lo) / top).clamp(min=1e-8).half()
    zeros = torch.round(-lo / scales.float()).clamp(0, top)
    q = torch.round(w / scales.float().unsqueeze(-1) + zeros.unsqueeze(-1)).clamp(0, top)
    return WeightOnlyLinear.from_integers(q.reshape(weight.shape).to(torch.uint8), scales, zeros.to(torch.uint8), bits, bias)


def quantize_embeddings(model: nn.Module, bits: int, group_size: int) -> WeightOnlyEmbedding:
    """Quantize a HuggingFace LM's input embedding (RTN) and a float ``lm_head`` (in place); the
    architecture's embedding scale (Gemma's √hidden, ``edgeq.quant.architectures``) is kept.

    A ``lm_head`` tied to the embedding becomes a ``WeightOnlyLinear`` over the same packed
    buffers (one table in the file); an untied float one (QuaRot unties it) is quantized alone."""
    table = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    packed = rtn_table(table, bits, group_size)
    arch = find_architecture(model)
    scale = model.config.hidden_size ** 0.5 if arch is not None and arch.embedding_scale else 1.0
    embedding = WeightOnlyEmbedding(packed, torch.tensor(scale, dtype=table.dtype).item())
    model.set_input_embeddings(embedding)
    if isinstance(head, nn.Linear):
        if head.weight is table:
            if head.bias is not None:
                packed.bias = head.bias.detach().float().clone()
            model.set_output_embeddings(packed)
        else:
            model.set_output_embeddings(rtn_table(head.weight, bits, group_size, head.bias))
        model.config.tie_word_embeddings = False  # nothing left for transformers to re-tie
    return embedding


class LowBitEmbeddingExport(WeightOnlyTwin):
    """``WeightOnlyEmbedding`` as one ``edgeq::lowbit_embedding`` call: packed rows gathered, then unpacked."""
    __module__ = EXPORT_RULES_MODULE

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.layer
        rows = torch.ops.edgeq.lowbit_embedding(ids, m.qweight, m.scales, m.zeros, m.bits, m.group_size)
        return rows * m.output_scale if m.output_scale != 1.0 else rows


register_export_rule(WeightOnlyEmbedding)(LowBitEmbeddingExport)
