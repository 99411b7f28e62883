"""Fold BatchNorm into the convolution or linear layer before it (inference form).

W' = W * gamma / sqrt(var + eps) (per output channel), b' = (b - mean) * gamma / sqrt(var + eps) + beta.
Quantizers fold first so that weights are quantized as they will be computed.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from edgeq.errors import QuantizationError

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` with ``bn`` (eval statistics) folded in."""
    fused = copy.deepcopy(layer)
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    factor = (gamma * inv_std).detach()
    shape = (-1,) + (1,) * (fused.weight.dim() - 1)
    bias = fused.bias.detach() if fused.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(fused.weight.detach() * factor.reshape(shape))
    fused.bias = nn.Parameter((bias - bn.running_mean) * factor + beta.detach())
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every BatchNorm that directly follows a conv/linear folded away.

    Works on the traced graph, so it finds pairs wherever they sit in the module tree. A model
    without BatchNorm is returned as an (untraced) copy.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return copy.deepcopy(model)
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # tracing failures come from user code; say which model
        raise QuantizationError(
            f"cannot trace {type(model).__name__} to fold BatchNorm: {type(exc).__name__}: {exc}"
        ) from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        producer = node.args[0]
        if not (isinstance(producer, torch.fx.Node) and producer.op == "call_module"):
            continue
        layer = modules[producer.target]
        if not isinstance(layer, _FOLDABLE) or len(producer.users) != 1:
            continue
        fused = fold_bn_into(layer, modules[node.target])
        parent, _, attr = producer.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, fused)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
