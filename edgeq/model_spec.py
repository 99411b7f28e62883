"""One way to name a PyTorch model, for every command and API entry that takes one.

``load_model(spec)`` accepts, in this order:

- a built-in model name: ``digits-cnn``, ``smollm2``;
- a Python factory the user names, ``path/to/file.py:make_model`` or
  ``package.module:make_model``: called with no arguments, it returns an ``nn.Module``;
- a Hugging Face folder (``config.json`` and ``*.safetensors``, as ``save_pretrained`` writes),
  loaded by transformers with ``use_safetensors=True`` and no remote code;
- a GGUF file (``*.gguf``), dequantized to float32 by transformers;
- a quantized ``.safetensors`` written by ``edgeq quantize`` (its metadata checked first).

Nothing is ever unpickled: ``.pt``, ``.pt2``, ``.pth``, ``.bin``, ``.ckpt``, ``.pkl`` files
and folders holding only ``pytorch_model.bin`` are refused with a ModelFileError, because
loading a pickle runs whatever code its author put in it. A factory runs code too, but only the
code the user named, the way ``python file.py`` would.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgeq.errors import ModelFileError

# What a model computes, where the config or the module says: decides how outputs are read.
KINDS = ("causal-lm", "encoder", "classifier", "vision")
PICKLE_SUFFIXES = (".pt", ".pt2", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_FACTORY = re.compile(r"^(?P<target>[^:]+\.py|[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")
_BUILTIN_KINDS = {"digits-cnn": "vision", "smollm2": "causal-lm"}
_VISION_MODEL_TYPES = {"vit", "deit", "beit", "swin", "convnext", "resnet", "mobilenet_v1", "mobilenet_v2",
                       "mobilevit", "efficientnet", "regnet", "dinov2"}


@dataclass
class LoadedModel:
    """A named model, ready to run in PyTorch (eval mode)."""

    module: nn.Module
    kind: str | None  # one of KINDS, or None where neither config nor module says
    source: str  # "builtin", "factory", "huggingface", "gguf" or "edgeq-quantized"
    origin: str  # the spec as the user gave it
    path: Path | None = None  # the file or folder it came from (for a tokenizer next to it)


def load_model(spec: str) -> LoadedModel:
    """The model ``spec`` names (see the module docstring); a ModelFileError naming the spec
    and what was expected when it names nothing loadable."""
    from edgeq.models import ALIASES, BUILTIN_MODELS, load_builtin

    if spec in BUILTIN_MODELS or spec in ALIASES:
        name = ALIASES.get(spec, spec)
        return LoadedModel(load_builtin(name), _BUILTIN_KINDS.get(name), "builtin", spec)
    path = Path(spec)
    if path.is_dir():
        return _huggingface_folder(spec, path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(f"{spec}: a {path.suffix} file is a pickle, and edgeq never loads one (loading it can run "
                             f"any code); {_ACCEPTED}")
    if path.suffix.lower() == ".gguf":
        return _gguf(spec, path)
    if path.suffix.lower() == ".safetensors":
        return _quantized(spec, path)
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(f"{spec}: an ONNX file is not a PyTorch model; {_ACCEPTED}")
    match = _FACTORY.match(spec)
    if match:
        return _factory(spec, match["target"], match["name"])
    if path.exists():
        raise ModelFileError(f"{spec}: not a model edgeq can load; {_ACCEPTED}")
    raise ModelFileError(f"{spec}: no such file, folder or built-in model; {_ACCEPTED}")


_ACCEPTED = ("expected a built-in model (digits-cnn, smollm2), FILE.py:FUNCTION or package.module:FUNCTION, "
             "a Hugging Face folder with config.json and *.safetensors, a .gguf file, or a .safetensors "
             "file from `edgeq quantize`")


def _factory(spec: str, target: str, name: str) -> LoadedModel:
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise ModelFileError(f"{spec}: no such file {file}")
        module_name = f"_edgeq_factory_{abs(hash(str(file.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module  # classes defined in the file (dataclasses) look their module up here
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ModelFileError(f"{spec}: importing {file} failed: {_first_line(exc)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelFileError(f"{spec}: cannot import {target} ({exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelFileError(f"{spec}: {target} has no function {name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise ModelFileError(f"{spec}: {name}() failed: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{spec}: {name}() returned {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model.eval(), _kind_of_module(model), "factory", spec, Path(target) if target.endswith(".py") else None)


def _huggingface_folder(spec: str, folder: Path) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise ModelFileError(f"{spec}: a folder without config.json is not a Hugging Face model; {_ACCEPTED}")
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        held = f"holds only {', '.join(pickles)} (pickles, which edgeq never loads)" if pickles else "holds no *.safetensors"
        raise ModelFileError(f"{spec}: the Hugging Face folder {held}; re-save it with "
                             f"save_pretrained(..., safe_serialization=True)")
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise ModelFileError(f"{spec}: config.json: {_first_line(exc)}") from None
    kind = _kind_of_config(config)
    auto = {"causal-lm": transformers.AutoModelForCausalLM}.get(kind)
    architectures = getattr(config, "architectures", None) or []
    if auto is None and architectures and hasattr(transformers, architectures[0]):
        auto = getattr(transformers, architectures[0])  # e.g. BertForSequenceClassification, ViTModel
    auto = auto or transformers.AutoModel
    try:
        model = auto.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelFileError(f"{spec}: transformers could not load it: {_first_line(exc)}") from None
    return LoadedModel(model.eval(), kind, "huggingface", spec, folder)


def _gguf(spec: str, path: Path) -> LoadedModel:
    import logging

    import torch
    import transformers

    if not path.is_file():
        raise ModelFileError(f"{spec}: no such file")
    logging.getLogger("gguf").setLevel(logging.ERROR)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelFileError(f"{spec}: not a GGUF model transformers can load: {_first_line(exc)}") from None
    return LoadedModel(model.eval(), "causal-lm", "gguf", spec, path)


def _quantized(spec: str, path: Path) -> LoadedModel:
    from edgeq.quant.serialize import load_quantized, read_metadata

    source = read_metadata(path)["source"]
    return LoadedModel(load_quantized(path), _BUILTIN_KINDS.get(source), "edgeq-quantized", spec, path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _kind_of_config(config, class_name: str | None = None) -> str | None:
    """The kind from a transformers config: its model type, else the (first) architecture's name."""
    if getattr(config, "model_type", None) in _VISION_MODEL_TYPES:
        return "vision"
    architectures = getattr(config, "architectures", None) or []
    arch = class_name or (architectures[0] if architectures else "")
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if arch.endswith(("ForSequenceClassification", "ForTokenClassification")):
        return "classifier"
    if arch.endswith("ForImageClassification"):
        return "vision"
    return "encoder" if arch.endswith("Model") or not arch else None


def _kind_of_module(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "model_type"):
        return _kind_of_config(config, type(model).__name__)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "vision"
    return None
