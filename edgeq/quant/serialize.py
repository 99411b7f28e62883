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
import re
from pathlib import Path

from torch import nn

from edgeq._io import atomic_path
from edgeq.errors import EdgeqError, ModelFileError, QuantizationError, first_line
from edgeq.models import BUILTIN_MODELS, load_builtin
from edgeq.quant.base import layer_formats, set_submodule
from edgeq.quant.hadamard import OnlineHadamard
from edgeq.recipes import recipe_from_dict

FORMAT = "edgeq-weight-only/1"
HUGGINGFACE = "huggingface"  # source: a transformers model, its config stored as ``source_config``
_FACTORY_SPEC = re.compile(r"^([^:]+\.py|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):[A-Za-z_]\w*$")


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
    model it was quantized from: a built-in name (``edgeq.models.BUILTIN_MODELS``),
    ``huggingface`` (the model's transformers config is stored in the file, which then rebuilds
    the structure alone), or a Python factory ``FILE.py:FUNCTION`` / ``package.module:FUNCTION``
    (recorded; loading asks for it again rather than run code a file names)."""
    from safetensors.torch import save_model

    extra = {}
    if source == HUGGINGFACE:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "to_json_string"):
            raise QuantizationError(f"{type(model).__name__} has no transformers config to record as its source")
        extra["source_config"] = config.to_json_string(use_diff=False)
    elif source not in BUILTIN_MODELS and not _FACTORY_SPEC.match(source):
        raise QuantizationError(f"unknown source model {source!r}; known: {', '.join(BUILTIN_MODELS)}, "
                                f"{HUGGINGFACE}, or a factory FILE.py:FUNCTION")
    recipe = getattr(model, "edgeq_recipe", None)
    if recipe is None:
        raise QuantizationError(f"{type(model).__name__} was not made by edgeq.quantize (no recipe attached)")
    formats = {f.layer_type: f for f in layer_formats().values()}
    layers = {n: formats[type(m)].spec(m) for n, m in quantized_layers(model).items()}
    hadamards = {n: {"size": m.size, "block_size": m.block_size} for n, m in model.named_modules()
                 if isinstance(m, OnlineHadamard)}
    rotated = getattr(getattr(model, "config", None), "edgeq_rotation", None)
    metadata = {"format": FORMAT, "source": source, "recipe": recipe.to_json(), "layers": json.dumps(layers),
                "hadamards": json.dumps(hadamards), "rotation": json.dumps(rotated), **extra}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict:
    """The file's string metadata, checked: an edgeq weight-only model whose structure entries
    are well-formed (a ModelFileError naming the file and the entry otherwise). Only safetensors'
    own header parser reads the file: nothing in it is ever unpickled or executed."""
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
    _structure(path, meta)
    return meta


_SCALE_DTYPES = ("float16", "bfloat16", "float32")
_LAYER_FIELDS = {"kind": str, "in": int, "out": int, "bits": int, "group_size": int, "bias": bool, "scale_dtype": str}
_CONV_FIELDS = {"in_channels": int, "kernel_size": list, "stride": list, "padding": list, "dilation": list, "groups": int}


def _structure(path: Path, meta: dict) -> tuple[dict, dict, dict | None]:
    """(layers, hadamards, rotation) from the metadata, each entry checked for its fields and types."""

    def bad(entry: str, why: str) -> ModelFileError:
        return ModelFileError(f"{path}: metadata {entry}: {why}")

    def parsed(key: str):
        if key not in meta:
            raise bad(repr(key), "missing")
        try:
            return json.loads(meta[key])
        except ValueError:
            raise bad(repr(key), "not JSON") from None

    source = meta.get("source")
    if source == HUGGINGFACE:
        config = parsed("source_config")
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise bad("'source_config'", "expected a transformers config object with a model_type")
    elif source not in BUILTIN_MODELS and not (isinstance(source, str) and _FACTORY_SPEC.match(source)):
        raise bad("'source'", f"{source!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
                              f"{HUGGINGFACE} or a factory FILE.py:FUNCTION")
    try:
        recipe_from_dict(parsed("recipe"))
    except (EdgeqError, TypeError, ValueError, AttributeError) as exc:  # RecipeError, the recipe's own checks
        raise bad("'recipe'", str(exc)) from None
    layers, hadamards, rotation = parsed("layers"), parsed("hadamards"), parsed("rotation")
    if not isinstance(layers, dict):
        raise bad("'layers'", "expected an object of layer name -> layer")
    formats = layer_formats()
    for name, spec in layers.items():
        if not isinstance(spec, dict) or spec.get("kind") not in formats:
            got = spec.get("kind") if isinstance(spec, dict) else type(spec).__name__
            raise bad(f"layer {name!r} field 'kind'", f"{got!r} is not a layer kind a loaded method defines ({', '.join(formats)})")
        if spec["kind"] not in ("linear", "conv2d"):
            continue  # the method's LayerFormat.empty checks its own fields
        fields = dict(_LAYER_FIELDS, **(_CONV_FIELDS if isinstance(spec, dict) and spec.get("kind") == "conv2d" else {}))
        if not isinstance(spec, dict) or set(spec) != set(fields):
            got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
            raise bad(f"layer {name!r}", f"expected the fields {sorted(fields)}, got {got}")
        for field, kind in fields.items():
            value = spec[field]
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if kind is list:
                ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            elif kind is int:
                ok = ok and value > 0
            if not ok:
                raise bad(f"layer {name!r} field {field!r}", f"ill-typed value {value!r}")
        if spec["scale_dtype"] not in _SCALE_DTYPES:
            raise bad(f"layer {name!r} field 'scale_dtype'", f"{spec['scale_dtype']!r} is not one of {', '.join(_SCALE_DTYPES)}")
        if spec["in"] % spec["group_size"]:
            raise bad(f"layer {name!r}", f"group size {spec['group_size']} does not divide {spec['in']} input features")
    if not isinstance(hadamards, dict) or not all(
            isinstance(h, dict) and set(h) == {"size", "block_size"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in h.values()) for h in hadamards.values()):
        raise bad("'hadamards'", "expected an object of module name -> {size, block_size} (positive integers)")
    if rotation is not None and not isinstance(rotation, dict):
        raise bad("'rotation'", "expected null or an object")
    return layers, hadamards, rotation


def load_quantized(path: str | Path, factory: str | None = None) -> nn.Module:
    """Rebuild the quantized model saved by :func:`save_quantized`. A model quantized from a
    Python factory needs ``factory`` (the same function, as the user names it): edgeq runs no
    code that a file's metadata names."""
    from safetensors.torch import load_model

    meta = read_metadata(path)
    layers, hadamards, rotation = _structure(Path(path), meta)
    model = _source_model(Path(path), meta, factory).eval()
    if rotation:
        from edgeq.quant.quarot import untie_lm_head

        untie_lm_head(model)
        model.config.edgeq_rotation = rotation
    formats = layer_formats()
    try:
        for name, spec in hadamards.items():
            linear = model.get_submodule(name.rpartition(".")[0])  # "...down_proj.0" -> the float down_proj
            set_submodule(model, name.rpartition(".")[0], nn.Sequential(OnlineHadamard(spec["size"], spec["block_size"]), linear))
        for name, spec in layers.items():
            set_submodule(model, name, formats[spec["kind"]].empty(spec))
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: its layers do not fit the {meta['source']} structure ({exc})") from None
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: tensors do not match the {meta['source']} structure ({first_line(exc)})") from None
    model.edgeq_recipe = recipe_from_dict(json.loads(meta["recipe"]))
    return model.eval()


def _source_model(path: Path, meta: dict, factory: str | None) -> nn.Module:
    """The float model whose structure the file's layers and tensors fill in."""
    source = meta["source"]
    if source in BUILTIN_MODELS:
        return load_builtin(source)
    if source == HUGGINGFACE:
        return _from_config(path, json.loads(meta["source_config"]))
    if factory is None:
        raise ModelFileError(f"{path} was quantized from the Python factory {source}; edgeq runs no code a file "
                             f"names: name the factory again (--source {source}, or load_quantized(path, factory=...))")
    from edgeq.model_spec import load_model

    return load_model(factory).module


def _from_config(path: Path, config: dict) -> nn.Module:
    """A transformers model built from its config alone (random weights, overwritten on load;
    no remote code, no download)."""
    import transformers

    config = dict(config)
    try:
        cfg = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
        architectures = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        if cls is None:
            return transformers.AutoModel.from_config(cfg, trust_remote_code=False)
        return cls(cfg)
    except Exception as exc:
        raise ModelFileError(f"{path}: metadata 'source_config': transformers cannot build it ({first_line(exc)})") from None
