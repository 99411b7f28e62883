"""``edgeq.generate`` and ``edgeq generate``: text from a model or a generation artifact on any
executor.

A source is one of
* the built-in ``smollm2``, a Hugging Face model folder or a ``.gguf`` file: quantized with a preset, exported as a
  KV-cache ONNX file and, for TVM, compiled; the results are cached in an output folder (with the
  tokenizer files) so the next call starts at once;
* an artifact folder: a KV-cache ``.onnx`` file (onnxruntime) or a compiled generation artifact
  (TVM) with ``tokenizer.json`` / ``tokenizer_config.json`` / ``generation_config.json`` beside it;
* a KV-cache ``.onnx`` file or a compiled artifact's ``.so`` (the tokenizer files in its folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import ModelFileError, RecipeError, first_line
from edgeq.runtime.generation import (
    CausalLMSession,
    Generation,
    GenerationResult,
    OrtCausalLMSession,
    SamplingConfig,
    TorchCausalLMSession,
)
from edgeq.runtime.tokenizer import (
    TOKENIZER_FILES,
    generation_config_of,
    load_tokenizer,
    prompt_ids,
    read_generation_config,
    save_tokenizer_files,
)

EXECUTORS = ("torch", "onnxruntime", "tvm")
DEFAULT_PRESET = "w4g128-rtn"
DEFAULT_OUT = "edgeq-generate"
ONNX_NAME = "model.onnx"
# The compiled cache's default length: the model's context, at most this. Every intermediate buffer
# is planned for the longest step, so SmolLM2's 8192 made compiling slow and the artifact's memory
# large for the prompts people type; a longer context is one --max-context away.
DEFAULT_MAX_CONTEXT = 2048


@dataclass
class Generator:
    """A session and its tokenizer: ``generator.stream(prompt)`` yields text as it is produced,
    ``generator(prompt)`` returns the whole ``GenerationResult``."""

    session: CausalLMSession
    tokenizer: Any
    executor: str
    artifact: Path | None = None  # the file the session runs (None for a torch model)

    def start(self, prompt: str | list[int], *, chat: bool = False, system: str | None = None,
              max_new_tokens: int = 128, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None, seed: int | None = None) -> Generation:
        """A ``Generation``: iterate it for text pieces; its ``result`` is set at the end."""
        ids = prompt if isinstance(prompt, list) else prompt_ids(self.tokenizer, prompt, chat=chat, system=system)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return Generation(self.session, self.tokenizer, ids, max_new_tokens=max_new_tokens, sampling=sampling)

    def stream(self, prompt, **options):
        return iter(self.start(prompt, **options))

    def __call__(self, prompt, **options) -> GenerationResult:
        return self.start(prompt, **options).run()


@dataclass(frozen=True)
class BuildOptions:
    """How a model becomes a generation artifact: the quantization ``preset`` (None: float) with
    the tied embedding/lm_head at ``embedding_bits`` (None: float), the TVM ``target`` and the
    compiled cache's ``max_context`` (None: ``default_max_context``), all cached in ``out_dir`` (None:
    ``edgeq-generate/<name>-<preset>-e<bits>``)."""

    preset: str | None = DEFAULT_PRESET
    embedding_bits: int | None = 4
    target: str = "cpu"
    max_context: int | None = None
    out_dir: str | Path | None = None

    def folder(self, name: str) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        tag = self.preset or "float"
        if self.preset and self.embedding_bits:
            tag += f"-e{self.embedding_bits}"
        return Path(DEFAULT_OUT) / f"{name}-{tag}"

    def tvm_folder(self, folder: Path) -> Path:
        return folder / (f"tvm-{self.target}" + (f"-ctx{self.max_context}" if self.max_context else ""))


def generate(source, prompt: str | list[int], *, tokenizer=None, executor: str = "onnxruntime",
             preset: str | None = None, out_dir: str | Path | None = None, threads: int | None = None,
             device: str | None = None, chat: bool = False, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stream: bool = False):
    """Generate text from ``source`` (see ``load_generator``) for ``prompt``: greedy by default,
    sampled with ``temperature`` > 0 (``top_k``, ``top_p``, ``seed``). Returns a
    ``GenerationResult`` (text, token ids, timings), or with ``stream=True`` a ``Generation`` to
    iterate for text pieces as they are produced."""
    generator = load_generator(source, executor=executor, tokenizer=tokenizer, preset=preset, out_dir=out_dir,
                               threads=threads, device=device)
    run = generator.start(prompt, chat=chat, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed)
    return run if stream else run.run()


def load_generator(source, executor: str = "onnxruntime", tokenizer=None, preset: str | None = None,
                   out_dir: str | Path | None = None, threads: int | None = None, device: str | None = None,
                   embedding_bits: int | None = 4, target: str = "cpu", max_context: int | None = None,
                   progress=None) -> Generator:
    """A ``Generator`` for ``source``: a session object (with ``tokenizer``), a Hugging Face
    ``nn.Module`` (with ``tokenizer``), ``"smollm2"``, a Hugging Face folder, a ``.gguf`` file,
    an artifact folder, a KV-cache ``.onnx`` file or a compiled artifact. Models are quantized
    with ``preset`` (default ``w4g128-rtn`` for a model named by path or ``smollm2``, none for an
    ``nn.Module``; ``"float"``: not at all), exported and, for TVM, compiled for ``target`` (see
    ``BuildOptions``); ``device`` (``rpc://host:port``) runs a TVM artifact there."""
    if executor not in EXECUTORS:
        raise RecipeError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if device and executor != "tvm":
        raise RecipeError("--device runs a TVM artifact on a device: use it with --executor tvm")
    say = progress or (lambda message: None)
    if isinstance(source, CausalLMSession) and not _is_module(source):
        if tokenizer is None:
            raise RecipeError("a session needs its tokenizer: pass tokenizer=")
        return Generator(source, tokenizer, type(source).__name__)
    options = BuildOptions(_preset_name(preset if preset is not None or _is_module(source) else DEFAULT_PRESET),
                           embedding_bits, target, max_context, out_dir)
    if _is_module(source):
        if tokenizer is None:
            raise RecipeError("a model needs its tokenizer: pass tokenizer=")
        return _from_model(source, tokenizer, executor, options, options.folder("model"), threads, device, say)
    path = Path(str(source))
    is_model = (str(source) == "smollm2" and not path.exists()) or (path.is_dir() and (path / "config.json").exists()) \
        or (path.is_file() and path.suffix == ".gguf")
    if not is_model:
        return _from_artifact(path, executor, threads, device)
    if executor == "torch":
        say(f"loading {source}")
        model, tokenizer = _load_model(source)
        return _from_model(model, tokenizer, executor, options, None, threads, device, say)
    return _from_artifact(build_generation_artifact(source, executor, options, say), executor, threads, device)


def _is_module(obj) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _preset_name(preset: str | None) -> str | None:
    return None if preset in (None, "", "float") else preset


def build_generation_artifact(source, executor: str = "onnxruntime", options: BuildOptions = BuildOptions(),
                              progress=None) -> Path:
    """The KV-cache ONNX file (``executor="onnxruntime"``) or the compiled TVM generation artifact
    of ``"smollm2"``, a Hugging Face folder or a GGUF file, built once into ``options``' folder
    with the tokenizer files and found there by the next call without loading the model."""
    say = progress or (lambda message: None)
    name = "smollm2" if str(source) == "smollm2" else Path(source).stem
    folder = options.folder(name)
    onnx_path = folder / ONNX_NAME
    if executor == "tvm":
        # one compiled by an edgeq that did not record its cache form, that returned the in-place
        # caches from every call, that took them before cache_length (its decode allocating its
        # workspace every step: slower steps) or whose decode made its mask views and logits every
        # step, is compiled again
        current = _generation_artifacts(options.tvm_folder(folder), cache_form_recorded=True)
        if current:
            return current[0]
    if not (onnx_path.exists() and (folder / "tokenizer.json").exists()):
        say(f"loading {name}")
        model, tokenizer = _load_model(source)
        model = _quantize(model, options.preset, options.embedding_bits, say)
        onnx_path = export_generation_onnx(model, tokenizer, folder, say)
    if executor == "onnxruntime":
        return onnx_path
    return compile_generation_artifact(onnx_path, options.tvm_folder(folder), options.target, options.max_context, say)


def _load_model(source):
    """(model, tokenizer) of the built-in SmolLM2, a Hugging Face folder or a GGUF file; float32, eval mode."""
    if source == "smollm2":
        from edgeq.models.smollm2 import load_smollm2

        return load_smollm2()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = Path(source)
    where = {"pretrained_model_name_or_path": str(path)}
    if path.suffix == ".gguf":  # transformers dequantizes the GGUF's weights and reads its vocabulary
        where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except Exception as exc:
        raise ModelFileError(f"{source}: cannot load it as a causal LM ({first_line(exc)})") from None
    return model.eval(), load_tokenizer(source)


def _quantize(model, preset, embedding_bits, say):
    import edgeq

    if preset is None:
        return model
    say(f"quantizing ({preset})")
    model = edgeq.quantize(model, preset)
    if embedding_bits:
        from edgeq.quant.embedding import quantize_embeddings

        hidden = model.get_input_embeddings().weight.shape[1]
        quantize_embeddings(model, embedding_bits, next(g for g in (128, 64, 32, 16, 8) if hidden % g == 0))
    return model


def _from_model(model, tokenizer, executor, options: BuildOptions, folder: Path | None, threads, device, say):
    model = _quantize(model, options.preset, options.embedding_bits, say)
    if executor == "torch":
        return Generator(TorchCausalLMSession(model, threads=threads), tokenizer, "torch")
    onnx_path = export_generation_onnx(model, tokenizer, folder, say)
    if executor == "tvm":
        onnx_path = compile_generation_artifact(onnx_path, options.tvm_folder(folder), options.target,
                                                options.max_context, say)
    return _from_artifact(onnx_path, executor, threads, device)


def export_generation_onnx(model, tokenizer, folder: str | Path, progress=None) -> Path:
    """``folder/model.onnx`` (the KV-cache export) with the tokenizer files beside it."""
    import torch

    import edgeq

    folder = Path(folder)
    (progress or (lambda m: None))(f"exporting the KV-cache ONNX file to {folder}")
    save_tokenizer_files(tokenizer, folder, generation_config_of(model, tokenizer))
    return edgeq.export(model, torch.zeros(1, 2, dtype=torch.int64), folder / ONNX_NAME, kv_cache=True)


def default_max_context(model_max_context: int | None) -> int:
    """The cache length compiled when none is asked: the model's own context (the file's
    ``max_context``), at most ``DEFAULT_MAX_CONTEXT``."""
    if model_max_context is None:
        return DEFAULT_MAX_CONTEXT
    return min(int(model_max_context), DEFAULT_MAX_CONTEXT)


def compile_generation_artifact(onnx_path: str | Path, out: str | Path, target: str = "cpu",
                                max_context: int | None = None, progress=None, act_bits: int = 32) -> Path:
    """The TVM generation artifact of a KV-cache ONNX file, compiled into ``out`` with the
    tokenizer files copied in (the folder is then all a device needs); ``max_context`` None:
    ``default_max_context`` of the file's; ``act_bits`` as in ``edgeq.compile``."""
    import shutil

    import edgeq
    from edgeq.export_kv import read_generation_metadata

    if max_context is None:
        max_context = default_max_context((read_generation_metadata(onnx_path) or {}).get("max_context"))
    out = Path(out)
    (progress or (lambda m: None))(f"compiling for {target} into {out}")
    artifact = edgeq.compile(onnx_path, target=target, out_dir=out, max_context=max_context, act_bits=act_bits)
    for name in TOKENIZER_FILES:
        if (Path(onnx_path).parent / name).exists():
            shutil.copyfile(Path(onnx_path).parent / name, out / name)
    return Path(artifact.path)


def _generation_artifacts(folder: Path, *, cache_form_recorded: bool = False) -> list[Path]:
    """Compiled libraries in ``folder`` whose ``.json`` has a ``generation`` entry (one that says how
    its cache is passed in one of the forms this edgeq compiles, ``generation["cache"]``, where
    ``cache_form_recorded``; and not a decode workspace without its logits item, compiled before
    the step's mask views and logits were made once)."""
    from edgeq.targets.generation import CACHE_APPENDING, CACHE_BOUND

    found = []
    for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if meta.name in TOKENIZER_FILES:
            continue
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        generation = data.get("generation") if isinstance(data, dict) else None
        if not generation:
            continue
        stale = generation.get("cache") not in (CACHE_BOUND, CACHE_APPENDING) or (
            "workspace" in generation and "workspace_logits" not in generation)
        if cache_form_recorded and stale:
            continue
        library = Path(data.get("path", "")).name or ""
        candidates = [meta.parent / library] if library else []
        candidates += [meta.with_suffix(s) for s in (".so", ".tar", ".dylib")]
        found += [c for c in candidates if c.is_file()][:1]
    return found


def _from_artifact(path: Path, executor: str, threads, device) -> Generator:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model, artifact or folder (or built-in model name: smollm2)")
    if path.is_dir():
        onnx_files = [p for p in sorted(path.glob("*.onnx"))]
        tvm_files = _generation_artifacts(path) or [a for sub in sorted(path.glob("tvm-*"))
                                                    for a in _generation_artifacts(sub)]
        if executor == "tvm" or (not onnx_files and tvm_files):
            if not tvm_files:
                raise ModelFileError(f"{path}: no compiled generation artifact here (a .so with a 'generation' entry "
                                     "in its .json)")
            path, executor = tvm_files[0], "tvm"
        elif onnx_files:
            if executor == "torch":
                raise RecipeError(f"{path} is an artifact folder: run it with --executor onnxruntime or tvm")
            path, executor = onnx_files[0], "onnxruntime"
        else:
            raise ModelFileError(f"{path}: no KV-cache .onnx file, compiled generation artifact or model config.json here")
    elif path.suffix == ".onnx":
        if executor == "tvm":
            raise RecipeError(f"{path} is an ONNX file: compile it first (edgeq compile) or use --executor onnxruntime")
        executor = "onnxruntime"
    else:
        executor = "tvm"
    tokenizer = load_tokenizer(path.parent)
    if executor == "onnxruntime":
        session = OrtCausalLMSession(path, threads=threads)
    else:
        from edgeq.runtime.tvm_generation import TvmCausalLMSession

        session = TvmCausalLMSession(path, threads=threads, device=device)
    if not getattr(session, "eos_token_ids", None):
        eos = read_generation_config(path.parent).get("eos_token_id")
        if eos is not None:
            session.eos_token_ids = eos if isinstance(eos, list) else [eos]
    return Generator(session, tokenizer, executor, artifact=path)
