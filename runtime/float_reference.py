"""The float model as a second reference: how far the quantized PyTorch model's outputs (and,
on request, each quantized layer's output) are from the float model's on the same inputs.

Every executor is checked against the quantized PyTorch model; this is the check of that model
itself, so a quantization that is wrong in PyTorch (a rotation folded the wrong way, all-zero
logits) shows even where every executor agrees with PyTorch. The bar is looser than an
executor's: quantization error is expected, a wrong model is not (``FLOAT_TOLERANCE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgeq.runtime.validate import Numerics, Tolerance, compare

# W4 stays near cosine 0.99 (tiny random-init Llama 0.989, SmolLM2-135M w4g128-rtn on seeded tokens 0.993,
# max rel 0.42: logits of random text are flat, so max rel is loose); a wrong model falls far below (all-zero
# logits: cosine 0, max rel 1)
FLOAT_TOLERANCE = Tolerance(max_rel=1.0, min_cosine=0.95, min_top1=0.0)


@dataclass
class FloatComparison:
    """The quantized model against the float model: one Numerics per output, and per quantized
    layer when asked (``layers``: layer name -> Numerics of its output)."""

    outputs: list[Numerics]
    tolerance: Tolerance = FLOAT_TOLERANCE
    layers: dict[str, Numerics] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.tolerance.accepts(n) for n in self.outputs)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "outputs": [n.to_dict() for n in self.outputs],
                "layers": {name: n.to_dict() for name, n in self.layers.items()}}

    def rows(self) -> list[list[str]]:
        """Table rows: output (or layer), max abs, max rel, cosine, top-1 agreement."""

        def row(name: str, n: Numerics) -> list[str]:
            top1 = "-" if n.top1_agreement is None else f"{n.top1_agreement:.2%}"
            return [name, f"{n.max_abs:.3g}", f"{n.max_rel:.3g}", f"{n.cosine:.6f}", top1]

        out = [row(n.output or "output", n) for n in self.outputs]
        return out + [row(name, n) for name, n in self.layers.items()]


def run_module(model: nn.Module, inputs: tuple) -> list[np.ndarray]:
    """The model's outputs as exported (a causal LM's logits, not its output object)."""
    from edgeq.tasks import wrap

    with torch.no_grad():
        out = wrap(model, inputs).module(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in outs]


def compare_with_float(float_model: nn.Module, qmodel: nn.Module, inputs: tuple, per_layer: bool = False,
                       tolerance: Tolerance = FLOAT_TOLERANCE) -> FloatComparison:
    """The quantized model's outputs against the float model's on ``inputs`` (a tuple of
    tensors); with ``per_layer`` each quantized layer's output against the float layer of the
    same name (on the first sample only, to bound memory)."""
    want = run_module(float_model, inputs)
    got = run_module(qmodel, inputs)
    names = [f"output{i}" for i in range(len(want))] if len(want) > 1 else [None]
    outputs = [compare("float model", w, g, name) for w, g, name in zip(want, got, names)]
    result = FloatComparison(outputs, tolerance)
    if per_layer:
        result.layers = _layer_errors(float_model, qmodel, tuple(t[:1] for t in inputs))
    return result


def _layer_errors(float_model: nn.Module, qmodel: nn.Module, inputs: tuple) -> dict[str, Numerics]:
    from edgeq.quant.serialize import quantized_layers

    layers = quantized_layers(qmodel)
    floats = dict(float_model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    errors: dict[str, Numerics] = {}

    def keep(name):
        return lambda module, args, out: seen.__setitem__(name, out.detach().float())

    def check(name):
        def hook(module, args, out):
            if name in seen and seen[name].shape == out.shape:
                errors[name] = compare("float model", seen.pop(name).numpy(), out.detach().float().numpy(), name)
        return hook

    handles = [floats[n].register_forward_hook(keep(n)) for n in layers if n in floats]
    try:
        run_module(float_model, inputs)
    finally:
        for h in handles:
            h.remove()
    handles = [m.register_forward_hook(check(n)) for n, m in layers.items()]
    try:
        run_module(qmodel, inputs)
    finally:
        for h in handles:
            h.remove()
    return errors
