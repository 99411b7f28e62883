"""Text generation over a KV-cache session: one loop for every executor.

A session holds a model and its KV cache and answers two calls, ``prefill`` (the prompt, or more
tokens appended to the cache) and ``decode`` (one token); both return the logits of the last
position. ``TorchCausalLMSession`` runs a Hugging Face causal LM (float or edgeq-quantized) with
its own ``DynamicCache``; ``OrtCausalLMSession`` runs edgeq's KV-cache ONNX file on onnxruntime;
the TVM generation artifact's session (``edgeq.runtime.tvm_generation``) follows the same
protocol. ``Generation`` drives any of them: greedy by default, or temperature / top-k / top-p
sampling from a seeded numpy Generator, streaming text as it goes and timing prefill and decode.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from edgeq.errors import ContextLengthError, ModelFileError, RecipeError, RuntimeExecError, first_line

GENERATION_METADATA_KEY = "edgeq.generation"  # the KV-cache file's metadata entry (edgeq.export_kv writes it)


@runtime_checkable
class CausalLMSession(Protocol):
    """A causal LM with its KV cache. A session raises ``ContextLengthError`` before a step that
    would take the cache past ``max_context``; it never truncates."""

    max_context: int | None  # tokens the cache can hold; None = unbounded
    position: int  # tokens now in the cache

    def reset(self) -> None: ...

    def prefill(self, input_ids: np.ndarray) -> np.ndarray:
        """int64 [seq] appended to the cache -> float32 logits [vocab] of the last position."""

    def decode(self, token_id: int) -> np.ndarray:
        """One token appended to the cache -> float32 logits [vocab]."""


def check_context(session, new_tokens: int) -> None:
    """Raise ``ContextLengthError`` if ``new_tokens`` more would not fit in ``session``'s cache."""
    if new_tokens < 1:
        raise RuntimeExecError("a generation step needs at least one token")
    limit = session.max_context
    if limit is not None and session.position + new_tokens > limit:
        raise ContextLengthError(f"{session.position} tokens in the cache + {new_tokens} new exceed the maximum "
                                 f"context of {limit} tokens")


def _token_ids(input_ids) -> np.ndarray:
    return np.asarray(input_ids, dtype=np.int64).reshape(-1)


class TorchCausalLMSession:
    """A Hugging Face causal LM (``LlamaForCausalLM`` and the like, float or quantized by edgeq)
    with a ``DynamicCache``. ``max_context`` defaults to the config's ``max_position_embeddings``
    (the positions the model was trained for). ``unpack_once``: run a copy whose weight-only
    linears hold their dequantized weights (``to_float``: the same outputs, without unpacking
    every weight at every token)."""

    def __init__(self, model, max_context: int | None = -1, threads: int | None = None, unpack_once: bool = True):
        import torch

        self.model = (_unpacked_copy(model) if unpack_once else model).eval()
        if max_context == -1:
            max_context = getattr(model.config, "max_position_embeddings", None)
        self.max_context = max_context
        self.threads = threads
        self._torch = torch
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
        self.eos_token_ids = _as_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None)
                                      or getattr(model.config, "eos_token_id", None))
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.position = 0

    def _step(self, ids: np.ndarray) -> np.ndarray:
        torch = self._torch
        check_context(self, len(ids))
        start = self.position
        input_ids = torch.from_numpy(ids).reshape(1, -1)
        positions = torch.arange(start, start + len(ids)).reshape(1, -1)
        mask = torch.ones(1, start + len(ids), dtype=torch.int64)
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 use_cache=True, logits_to_keep=1, **{self._cache_arg: self.cache})
        finally:
            if self.threads:
                torch.set_num_threads(threads)
        self.position = start + len(ids)
        return out.logits[0, -1].float().numpy()

    def prefill(self, input_ids) -> np.ndarray:
        return self._step(_token_ids(input_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._step(np.array([token_id], dtype=np.int64))


def _unpacked_copy(model):
    """``model`` itself if it has no ``WeightOnlyLinear``, else a copy where each is an
    ``nn.Linear`` of its dequantized weight."""
    import copy

    from edgeq.quant.weight_only import WeightOnlyLinear

    names = [name for name, m in model.named_modules() if type(m) is WeightOnlyLinear]
    if not names:
        return model
    model = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).to_float())
    return model


def read_generation_metadata(onnx_path: str | Path) -> dict:
    """The ``edgeq.generation`` entry of a KV-cache ONNX file (read without its weights; the
    runtime reads the file's contract, it does not import the exporter)."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    if GENERATION_METADATA_KEY not in props:
        raise ModelFileError(f"{path}: not a KV-cache generation model (no '{GENERATION_METADATA_KEY}' metadata; "
                             "export it with kv_cache=True / edgeq export --kv-cache)")
    return json.loads(props[GENERATION_METADATA_KEY])


class OrtCausalLMSession:
    """edgeq's KV-cache ONNX file on onnxruntime. The cache lives in numpy arrays that go in as
    ``past_key_values.{i}.key/value`` and come back, one token longer, as ``present.{i}.*``.
    MatMulNBits' activations stay float32 (accuracy level 0) unless ``accuracy_level`` says 4."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None, accuracy_level: int = 0,
                 max_context: int | None = -1):
        from edgeq.runtime.ort import ort_session

        self.path = Path(onnx_path)
        self.meta = read_generation_metadata(self.path)
        self.session = ort_session(self.path, accuracy_level=accuracy_level, threads=threads)
        self.max_context = self.meta.get("max_context") if max_context == -1 else max_context
        self.eos_token_ids = _as_list(self.meta.get("eos_token_ids"))
        self.num_layers = int(self.meta["num_layers"])
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.reset()

    def reset(self) -> None:
        shape = (1, int(self.meta["num_kv_heads"]), 0, int(self.meta["head_dim"]))
        self.cache = {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
                      for i in range(self.num_layers) for kind in ("key", "value")}
        self.position = 0

    def _step(self, ids: np.ndarray) -> np.ndarray:
        check_context(self, len(ids))
        start = self.position
        feeds = {"input_ids": ids.reshape(1, -1),
                 "attention_mask": np.ones((1, start + len(ids)), np.int64),
                 "position_ids": np.arange(start, start + len(ids), dtype=np.int64).reshape(1, -1),
                 **self.cache}
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        try:
            outputs = dict(zip(self._output_names, self.session.run(self._output_names, feeds)))
        except Exception as exc:
            raise RuntimeExecError(f"onnxruntime failed on {self.path}: {first_line(exc)}") from None
        for i in range(self.num_layers):
            for kind in ("key", "value"):
                self.cache[f"past_key_values.{i}.{kind}"] = outputs[f"present.{i}.{kind}"]
        self.position = start + len(ids)
        return np.asarray(outputs["logits"][0, -1], dtype=np.float32)

    def prefill(self, input_ids) -> np.ndarray:
        return self._step(_token_ids(input_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._step(np.array([token_id], dtype=np.int64))


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


@dataclass(frozen=True)
class SamplingConfig:
    """Greedy when ``temperature`` is 0 (the default); otherwise sample from the softmax of
    logits / temperature, kept to the ``top_k`` most likely tokens and to the smallest set whose
    probability reaches ``top_p``, with a numpy Generator seeded by ``seed`` (reproducible)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise RecipeError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise RecipeError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise RecipeError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise RecipeError("top-k / top-p sample: give a temperature > 0 as well (temperature 0 is greedy)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def pick_token(logits: np.ndarray, sampling: SamplingConfig, rng: np.random.Generator) -> int:
    """The next token from ``logits`` [vocab]: argmax, or a sample under ``sampling``."""
    if sampling.greedy:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.size:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class IncrementalDetokenizer:
    """Text of a growing list of token ids, released piece by piece. A piece is released only when
    it no longer ends in an incomplete UTF-8 sequence (a multi-byte character split over byte
    tokens decodes to U+FFFD until its last byte arrives), so the pieces join to exactly
    ``tokenizer.decode(ids, skip_special_tokens=True)``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids before this are fully released; decoding restarts here
        self._read = 0  # ids before this are released; ids[_prefix:_read] give context

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append a token; the text it completes (maybe empty)."""
        self.ids.append(int(token_id))
        released = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        if len(text) > len(released) and not text.endswith("\ufffd") and text.startswith(released):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(released):]
        return ""

    def flush(self) -> str:
        """What is left at the end (an incomplete character stays as U+FFFD, as in a batch decode)."""
        released = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(released):]


@dataclass
class GenerationStats:
    """Timing of one generation: time to first token (prefill and the first pick), prefill
    tokens/s over the prompt, decode tokens/s over the tokens after the first."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tok_s: float = 0.0
    decode_tok_s: float | None = None
    total_s: float = 0.0
    finish_reason: str = ""  # "eos" or "length"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)


class Generation:
    """A generation in progress: iterate it for the text as it is produced; ``result`` holds the
    token ids, the whole text and the timings once it is done. ``run()`` consumes it."""

    def __init__(self, session: CausalLMSession, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                 sampling: SamplingConfig | None = None, eos_token_ids: Sequence[int] | None = None,
                 reset: bool = True):
        if max_new_tokens < 1:
            raise RecipeError(f"max new tokens must be >= 1, got {max_new_tokens}")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise RecipeError("the prompt has no tokens")
        self.session = session
        self.tokenizer = tokenizer
        self.prompt_ids = prompt
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingConfig()
        self.eos_token_ids = set(eos_token_ids if eos_token_ids is not None else _default_eos(session, tokenizer))
        self.reset = reset
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        rng = np.random.default_rng(self.sampling.seed)
        detok = IncrementalDetokenizer(self.tokenizer)
        stats = GenerationStats(prompt_tokens=len(self.prompt_ids), finish_reason="length")
        if self.reset:
            self.session.reset()
        start = time.perf_counter()
        logits = self.session.prefill(np.asarray(self.prompt_ids, dtype=np.int64))
        token = pick_token(logits, self.sampling, rng)
        first = time.perf_counter()
        stats.ttft_s = first - start
        stats.prefill_tok_s = len(self.prompt_ids) / stats.ttft_s
        generated: list[int] = []
        paused = 0.0  # time the consumer held the stream: not the generation's
        while True:
            if token in self.eos_token_ids:
                stats.finish_reason = "eos"
                break
            generated.append(token)
            piece = detok.add(token)
            if piece:
                suspended = time.perf_counter()
                yield piece
                paused += time.perf_counter() - suspended
            if len(generated) == self.max_new_tokens:
                break
            token = pick_token(self.session.decode(token), self.sampling, rng)
        end = time.perf_counter() - paused
        stats.new_tokens = len(generated)
        stats.total_s = end - start
        steps = len(generated) - 1 + (stats.finish_reason == "eos")  # decode calls made
        stats.decode_tok_s = steps / (end - first) if steps > 0 and end > first else None
        text = self.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self.result = GenerationResult(text=text, token_ids=generated, prompt_ids=self.prompt_ids, stats=stats)
        tail = detok.flush()
        if tail:
            yield tail

    def run(self, on_text: Callable[[str], None] | None = None) -> GenerationResult:
        for piece in self:
            if on_text:
                on_text(piece)
        assert self.result is not None
        return self.result


def _default_eos(session, tokenizer) -> list[int]:
    ids = list(getattr(session, "eos_token_ids", None) or [])
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = [int(tokenizer.eos_token_id)]
    return ids
