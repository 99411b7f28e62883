"""One way to name a PyTorch model, for every command and API entry that takes one.

``load_model(spec)`` accepts, in this order:

- a built-in model name: ``digits-cnn``, ``smollm2``;
- a Python factory the user names, ``path/to/file.py:make_model`` or
  ``package.module:make_model``: called with no arguments, it returns an ``nn.Module``;
- a Hugging Face folder (``config.json`` and ``*.safetensors``, as ``save_pretrained`` writes),
  loaded by transformers with ``use_safetensors=True`` and no remote code;
- a GGUF file (``*.gguf``), dequantized to float32 by transformers;
- a quantized ``.safetensors`` written by ``edgeq quantize`` (its metadata checked first); one
  made from a Python factory needs that factory named again (``factory=``, ``--source``).

``example_inputs(loaded)`` gives the inputs such a model takes, so that every command can
export, calibrate and compare it without asking for shapes.

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
from typing import Callable

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
    example: Callable[[], tuple] | None = None  # a factory module's ``example_inputs()``, when it defines one

    @property
    def builtin(self) -> str | None:
        """The registry name of a built-in model, else None."""
        from edgeq.models import builtin_name

        return builtin_name(self.origin) if self.source == "builtin" else None

    @property
    def saved_source(self) -> str:
        """What ``save_quantized`` records as this model's source: the built-in name,
        ``huggingface`` (the config goes in the file) or the factory as the user named it."""
        if self.source == "builtin":
            return self.builtin
        if self.source == "edgeq-quantized":
            raise ModelFileError(f"{self.origin}: already quantized by edgeq; quantize the float model it came from")
        if self.source == "factory":
            return self.origin
        return "huggingface"


def load_model(spec: str, factory: str | None = None) -> LoadedModel:
    """The model ``spec`` names (see the module docstring); a ModelFileError naming the spec
    and what was expected when it names nothing loadable. ``factory``: for a quantized file made
    from a Python factory, that factory (a file never makes edgeq run the code it names)."""
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
        return _quantized(spec, path, factory)
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(f"{spec}: an ONNX file is not a PyTorch model; {_ACCEPTED}")
    match = _FACTORY.match(spec)
    if match:
        return _factory(spec, match["target"], match["name"])
    if path.exists():
        raise ModelFileError(f"{spec}: not a model edgeq can load; {_ACCEPTED}")
    raise ModelFileError(f"{spec}: no such file, folder or built-in model; {_ACCEPTED}")


def names_a_pytorch_model(spec: str) -> bool:
    """Whether ``spec`` has the form of a PyTorch model name (for stages that take ONNX, to say
    "export it first" rather than "not an ONNX file"); nothing is loaded."""
    from edgeq.models import ALIASES, BUILTIN_MODELS

    path = Path(spec)
    if spec in BUILTIN_MODELS or spec in ALIASES or path.suffix.lower() in (".gguf", ".safetensors"):
        return True
    return (path.is_dir() and (path / "config.json").is_file()) or bool(_FACTORY.match(spec) and not path.exists())


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
    example = getattr(module, "example_inputs", None)
    return LoadedModel(model.eval(), _kind_of_module(model), "factory", spec, Path(target) if target.endswith(".py") else None,
                       example if callable(example) else None)


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


def _quantized(spec: str, path: Path, factory: str | None) -> LoadedModel:
    from edgeq.quant.serialize import load_quantized, read_metadata

    source = read_metadata(path)["source"]
    model = load_quantized(path, factory=factory)
    kind = _BUILTIN_KINDS.get(source) or _kind_of_module(model)
    example = load_model(factory).example if factory else None
    return LoadedModel(model, kind, "edgeq-quantized", spec, path, example)


def example_inputs(loaded: LoadedModel, batch: int = 1, seed: int = 0, seq: int = 8) -> tuple:
    """Inputs the model takes, for export, calibration and the float comparison: the built-in
    CNN's test images; token ids (seeded, ``batch`` x ``seq``) for a transformer on text; pixels
    shaped from the config for a vision transformer; a factory module's ``example_inputs()``
    (its first dimension repeated or cut to ``batch``), else a seeded vector for a model whose
    first layer is a Linear. A ModelFileError says what to add where none of these applies."""
    import torch

    from edgeq.models import digits_data, is_builtin

    generator = torch.Generator().manual_seed(seed)
    source = loaded.origin
    if loaded.source == "edgeq-quantized":
        from edgeq.quant.serialize import read_metadata

        source = read_metadata(loaded.path)["source"]
    if is_builtin(source, "digits-cnn"):
        return (digits_data().x_test[:batch],)
    if loaded.example is not None:
        try:
            given = loaded.example()
        except Exception as exc:
            raise ModelFileError(f"{loaded.origin}: example_inputs() failed: {_first_line(exc)}") from None
        given = given if isinstance(given, (tuple, list)) else (given,)
        if not given or not all(isinstance(t, torch.Tensor) for t in given):
            raise ModelFileError(f"{loaded.origin}: example_inputs() must return a tensor or a tuple of tensors")
        return tuple(_batched(t, batch, generator) for t in given)
    config = getattr(loaded.module, "config", None)
    if config is not None and getattr(config, "vocab_size", None) and loaded.kind != "vision":
        return (torch.randint(0, int(config.vocab_size), (batch, seq), generator=generator),)
    if config is not None and getattr(config, "image_size", None):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return (torch.randn(batch, getattr(config, "num_channels", 3), size, size, generator=generator),)
    first = next((m for m in loaded.module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        return (torch.randn(batch, first.in_features, generator=generator),)
    raise ModelFileError(f"{loaded.origin}: edgeq cannot tell what inputs this model takes; define "
                         f"`def example_inputs(): return (torch.randn(1, 3, 32, 32),)` (your shapes) "
                         f"next to the factory")


def _batched(t, batch: int, generator):
    """``t`` with ``batch`` rows: its own rows first, then seeded ones like them."""
    import torch

    if t.dim() == 0 or t.shape[0] >= batch:
        return t[:batch] if t.dim() else t
    extra = batch - t.shape[0]
    shape = (extra, *t.shape[1:])
    if t.is_floating_point():
        more = torch.randn(shape, generator=generator, dtype=t.dtype) * t.std().clamp_min(1e-6) + t.mean()
    else:
        low, high = int(t.min()), int(t.max()) + 1
        more = torch.randint(low, max(high, low + 1), shape, generator=generator, dtype=t.dtype)
    return torch.cat([t, more])


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
