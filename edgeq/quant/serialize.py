"""Save and load weight-only quantized models as one safetensors file.

The file holds the whole state dict (packed ``qweight``, ``scales``, ``zeros`` of every
quantized layer, float tensors of the rest, Hadamard sign vectors) and, in its string metadata,
the recipe JSON, the name of the built-in source model it was made from, and the structure
needed to rebuild the module tree: each quantized layer's kind and shape (recorded and rebuilt
by the ``LayerFormat`` its method module registers, ``edgeq.quant.base``), the online
Hadamards, and whether the model was rotated (lm_head untied). Loading builds the source model, applies that
structure with empty buffers and loads the state dict strictly, so outputs are identical.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from edgeq._io import atomic_path
from edgeq.errors import ModelFileError, QuantizationError
from edgeq.models import BUILTIN_MODELS, load_builtin
from edgeq.quant.base import layer_formats, set_submodule
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.recipes import recipe_from_dict

FORMAT = "edgeq-weight-only/1"


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost modules of ``model`` whose type has a registered ``LayerFormat``, by name."""
    formats = {f.layer_type: f for f in layer_formats().values()}
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if type(m) in formats and not any(name.startswith(outer + ".") for outer in found):
            found[name] = m
    return found


def save_quantized(model: nn.Module, path: str | Path, source: str) -> Path:
    """Write ``model`` (from ``edgeq.quantize``) to ``path`` (.safetensors); ``source`` names the
    built-in model it was quantized from (``edgeq.models.BUILTIN_MODELS``)."""
    from safetensors.torch import save_model

    if source not in BUILTIN_MODELS:
        raise QuantizationError(f"unknown source model {source!r}; known: {', '.join(BUILTIN_MODELS)}")
    recipe = getattr(model, "edgeq_recipe", None)
    if recipe is None:
        raise QuantizationError(f"{type(model).__name__} was not made by edgeq.quantize (no recipe attached)")
    formats = {f.layer_type: f for f in layer_formats().values()}
    layers = {n: formats[type(m)].spec(m) for n, m in quantized_layers(model).items()}
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
    model = load_builtin(meta["source"]).eval()
    rotation = json.loads(meta["rotation"])
    if rotation:
        from edgeq.quant.quarot import untie_lm_head

        untie_lm_head(model)
        model.config.edgeq_rotation = rotation
    for name, spec in json.loads(meta["hadamards"]).items():
        linear = model.get_submodule(name.rpartition(".")[0])  # "...down_proj.0" -> the float down_proj
        set_submodule(model, name.rpartition(".")[0], nn.Sequential(OnlineHadamard(spec["size"], spec["block_size"]), linear))
    formats = layer_formats()
    for name, spec in json.loads(meta["layers"]).items():
        if spec["kind"] not in formats:
            raise ModelFileError(f"{path}: layer {name} is of kind {spec['kind']!r}, which no loaded method defines")
        set_submodule(model, name, formats[spec["kind"]].empty(spec))
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: tensors do not match the {meta['source']} structure ({str(exc).splitlines()[0]})") from None
    model.edgeq_recipe = recipe_from_dict(json.loads(meta["recipe"]))
    return model.eval()
