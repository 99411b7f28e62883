"""Save and load weight-only quantized models as one safetensors file.

The file holds the whole state dict (packed ``qweight``, ``scales``, ``zeros`` of every
quantized layer, float tensors of the rest, Hadamard sign vectors) and, in its string metadata,
the recipe JSON, the name of the built-in source model it was made from, and the structure
needed to rebuild the module tree: each quantized layer's kind and shape, the online Hadamards,
and whether the model was rotated (lm_head untied). Loading builds the source model, applies that
structure with empty buffers and loads the state dict strictly, so outputs are identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeq._io import atomic_path
from edgeq.errors import ModelFileError, QuantizationError
from edgeq.quant.base import set_submodule
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.maths.packing import packed_length
from edgeq.quant.weight_only import WeightOnlyConv2d, WeightOnlyLinear
from edgeq.recipes import recipe_from_dict

FORMAT = "edgeq-weight-only/1"


def _load_smollm2() -> nn.Module:
    from edgeq.models.smollm2 import load_smollm2

    return load_smollm2()[0]


def _load_digits_cnn() -> nn.Module:
    from edgeq.models import load_digits_cnn

    return load_digits_cnn()


SOURCES: dict[str, Callable[[], nn.Module]] = {"smollm2": _load_smollm2, "digits-cnn": _load_digits_cnn}


def _layer_spec(m: WeightOnlyLinear) -> dict:
    spec = {"kind": "linear", "in": m.in_features, "out": m.out_features, "bits": m.bits, "group_size": m.group_size,
            "bias": m.bias is not None, "scale_dtype": str(m.scales.dtype).removeprefix("torch.")}
    if isinstance(m, WeightOnlyConv2d):
        spec.update(kind="conv2d", in_channels=m.in_channels, kernel_size=list(m.kernel_size), stride=list(m.stride),
                    padding=list(m.padding), dilation=list(m.dilation), groups=m.groups)
    return spec


def save_quantized(model: nn.Module, path: str | Path, source: str) -> Path:
    """Write ``model`` (from ``edgeq.quantize``) to ``path`` (.safetensors); ``source`` names the
    built-in model it was quantized from (see ``SOURCES``)."""
    from safetensors.torch import save_model

    if source not in SOURCES:
        raise QuantizationError(f"unknown source model {source!r}; known: {', '.join(SOURCES)}")
    recipe = getattr(model, "edgeq_recipe", None)
    if recipe is None:
        raise QuantizationError(f"{type(model).__name__} was not made by edgeq.quantize (no recipe attached)")
    layers = {n: _layer_spec(m) for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}
    hadamards = {n: {"size": m.size, "block_size": m.block_size} for n, m in model.named_modules()
                 if isinstance(m, OnlineHadamard)}
    rotated = getattr(getattr(model, "config", None), "edgeq_rotation", None)
    metadata = {"format": FORMAT, "source": source, "recipe": recipe.to_json(), "layers": json.dumps(layers),
                "hadamards": json.dumps(hadamards), "rotation": json.dumps(rotated)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"quantized model not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelFileError(f"{path}: not a safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgeq weight-only model (format {meta.get('format')!r})")
    return meta


def load_quantized(path: str | Path) -> nn.Module:
    """Rebuild the quantized model saved by :func:`save_quantized`."""
    from safetensors.torch import load_model

    meta = read_metadata(path)
    model = SOURCES[meta["source"]]().eval()
    rotation = json.loads(meta["rotation"])
    if rotation:
        from edgeq.quant.quarot import untie_lm_head

        untie_lm_head(model)
        model.config.edgeq_rotation = rotation
    for name, spec in json.loads(meta["hadamards"]).items():
        linear = model.get_submodule(name.rpartition(".")[0])  # "...down_proj.0" -> the float down_proj
        set_submodule(model, name.rpartition(".")[0], nn.Sequential(OnlineHadamard(spec["size"], spec["block_size"]), linear))
    for name, spec in json.loads(meta["layers"]).items():
        set_submodule(model, name, _empty_layer(spec))
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: tensors do not match the {meta['source']} structure ({str(exc).splitlines()[0]})") from None
    model.edgeq_recipe = recipe_from_dict(json.loads(meta["recipe"]))
    return model.eval()


def _empty_layer(spec: dict) -> WeightOnlyLinear:
    out_f, in_f, bits, g = spec["out"], spec["in"], spec["bits"], spec["group_size"]
    dtype = getattr(torch, spec["scale_dtype"])
    buffers = (torch.zeros(out_f, packed_length(in_f, bits), dtype=torch.uint8), torch.zeros(out_f, in_f // g, dtype=dtype),
               torch.zeros(out_f, in_f // g, dtype=torch.uint8), torch.zeros(out_f) if spec["bias"] else None)
    if spec["kind"] == "conv2d":
        return WeightOnlyConv2d(spec["in_channels"], out_f, tuple(spec["kernel_size"]), spec["stride"], spec["padding"],
                                spec["dilation"], spec["groups"], bits, g, *buffers)
    return WeightOnlyLinear(in_f, out_f, bits, g, *buffers)
