"""How quantized modules leave PyTorch: each is swapped for its export twin while exporting.

A twin (registered by the layer's own module with ``edgeq.quant.base.register_export_rule``)
shares the layer's buffers and its forward calls torch custom ops with ONNX translations
(``edgeq.opset``), so the exported graph holds one ``edgeq`` node (or a standard-ONNX form) per
layer instead of the unpacking arithmetic. ``edgeq.export`` swaps the twins in for the duration
of the export only.

Every module class defined under ``edgeq.quant`` is a quantized layer edgeq knows; one with no
rule is refused with its path and type rather than exported as whatever its forward traces to.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from edgeq.errors import ExportError
from edgeq.quant.base import export_rules


def is_edgeq_quantized(module: nn.Module, rules: dict) -> bool:
    """Defined under ``edgeq.quant``, or a subclass of a type with a rule (its forward may differ)."""
    return type(module).__module__.startswith("edgeq.quant.") or isinstance(module, tuple(rules))


def planned_replacements(model: nn.Module) -> dict[str, nn.Module]:
    """Twins for every quantized module; ExportError for one edgeq knows but cannot export."""
    rules = export_rules()
    twins: dict[str, nn.Module] = {}
    skip_under: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip_under):
            continue  # inside a module that exports as a whole
        rule = rules.get(type(module))
        if rule is None and is_edgeq_quantized(module, rules):
            raise ExportError(f"{name or 'model'} ({type(module).__module__}.{type(module).__name__}) has no export rule")
        if rule is None:
            continue
        twin = rule(module)
        if twin is not module:
            twins[name] = twin
        skip_under.append(name)
    return twins


@contextlib.contextmanager
def export_twins(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Swap each quantized module for its export twin, and back afterwards whatever happens."""
    twins = planned_replacements(model)
    originals = {name: model.get_submodule(name) for name in twins}
    try:
        for name, twin in twins.items():
            _set(model, name, twin)
        yield twins
    finally:
        for name, module in originals.items():
            _set(model, name, module)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise ExportError(f"the whole model ({type(model).__name__}) is a quantized layer: wrap it in a module to export it")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
