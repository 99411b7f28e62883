"""Fold BatchNorm into the convolution or linear layer before it (inference form).

W' = W * gamma / sqrt(var + eps) (per output channel), b' = (b - mean) * gamma / sqrt(var + eps) + beta.
Quantizers fold first so that weights are quantized as they will be computed.

The pairs are found on the model's torch.fx graph (:func:`trace`); a Hugging Face model is folded
in itself (the conv takes the folded weights, the BatchNorm becomes an ``nn.Identity``), so that
it stays one, with its config and its outputs.
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.fx
from torch import nn

from edgeq.errors import QuantizationError
from edgeq.quant.base import set_submodule

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


class _ShapedInput(torch.fx.Proxy):
    """A traced input whose shape is the example's: Python that reads it (Hugging Face ResNet
    checks its input's channel count) gets numbers, as torch.export specializes on its example."""

    def __init__(self, node: torch.fx.Node, tracer, shape: torch.Size):
        super().__init__(node, tracer)
        self.example_shape = shape

    def __getattr__(self, name: str):
        shape = self.__dict__["example_shape"]
        if name == "shape":
            return shape
        if name == "ndim":
            return len(shape)
        if name == "size":
            return lambda dim=None: shape if dim is None else shape[dim]
        if name == "dim":
            return lambda: len(shape)
        return super().__getattr__(name)


class _ExampleTracer(torch.fx.Tracer):
    """``symbolic_trace`` whose inputs have the shapes of ``example`` (see :class:`_ShapedInput`)."""

    def __init__(self, example: tuple | None):
        super().__init__()
        self.shapes = [x.shape for x in example] if example is not None else []

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        if node.op == "placeholder":
            index = sum(1 for n in node.graph.nodes if n.op == "placeholder") - 1
            if index < len(self.shapes):
                return _ShapedInput(node, self, self.shapes[index])
        return super().proxy(node)


class TaskForward(nn.Module):
    """A Hugging Face model called with its inputs by position, returning its task's output tensor
    (``logits`` of a classifier, ``last_hidden_state`` of an encoder): a forward torch.fx can trace."""

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model, self.field = model, field

    def forward(self, pixel_values):
        return getattr(self.model(pixel_values), self.field)


def is_hf_model(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "model_type")


def traceable(model: nn.Module) -> nn.Module:
    """``model``, or for a Hugging Face image model the :class:`TaskForward` around it (its own
    forward takes labels and flags and returns a ``ModelOutput``). Module paths inside the
    wrapper start with ``model.``."""
    if not is_hf_model(model):
        return model
    params = list(inspect.signature(model.forward).parameters)
    if not params or params[0] != "pixel_values":
        raise QuantizationError(f"{type(model).__name__}: only image models (pixel_values) of Hugging Face are traced")
    return TaskForward(model, "logits" if hasattr(model, "classifier") else "last_hidden_state")


def trace(model: nn.Module, example: tuple | None = None, why: str = "to fold BatchNorm") -> torch.fx.GraphModule:
    """The torch.fx graph of ``model``; a branch on a traced value is settled on ``example``."""
    tracer = _ExampleTracer(example)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # tracing failures come from user code; say which model
        name = type(model.model if isinstance(model, TaskForward) else model).__name__
        raise QuantizationError(f"cannot trace {name} {why}: {type(exc).__name__}: {exc}") from None
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def fold_batchnorm(model: nn.Module, example: tuple | None = None) -> nn.Module:
    """Return a copy of ``model`` with every BatchNorm that directly follows a conv/linear folded away
    (``example``: inputs whose shapes settle Python that reads them, see :func:`trace`).

    The pairs come from the traced graph, so they are found wherever they sit in the module tree:
    a BatchNorm on the output of a conv/linear whose only user it is. A Hugging Face model is
    folded in itself (each such conv and BatchNorm called once; the BatchNorm becomes an
    ``nn.Identity``), so that it stays one; any other module comes back as the traced
    GraphModule. A model without BatchNorm is returned as an (untraced) copy.
    """
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    root = traceable(model)
    gm = trace(root, example)
    in_place = root is not model
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
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
        if in_place:
            if calls[producer.target] == 1 and calls[node.target] == 1:
                set_submodule(model, producer.target.removeprefix("model."), fused)
                set_submodule(model, node.target.removeprefix("model."), nn.Identity())
            continue
        set_submodule(gm, producer.target, fused)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
    if in_place:
        return model.eval()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()

