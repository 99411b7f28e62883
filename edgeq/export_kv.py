"""A HuggingFace causal LM with its KV cache as ONNX inputs and outputs (``edgeq.export(..., kv_cache=True)``).

The file's signature (onnxruntime-genai's names), one file for prefill and decode:

* inputs ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, past + seq],
  ``position_ids`` int64 [batch, seq], and per layer ``past_key_values.{i}.key`` / ``.value``
  float32 [batch, num_kv_heads, past, head_dim];
* outputs ``logits`` float32 [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  float32 [batch, num_kv_heads, past + seq, head_dim].

``seq`` and ``past`` are symbolic: prefill feeds ``past = 0`` (empty cache tensors), each decode
step ``seq = 1`` and the previous step's ``present`` as ``past``. The model's metadata key
``edgeq.generation`` holds what a generation session needs (a JSON object, see
``generation_metadata``). Every layer's cache is one growing key/value pair (transformers'
``DynamicLayer``), sliding-window layers (Mistral, Gemma2) included: they keep every token too, and
their window is applied by the model's own sliding-window attention mask, so the file computes what
the model computes at any length (a cache trimmed to the window would save memory, not change a
logit). A model whose layers need another kind of state (linear attention, recurrent layers) is
refused.
"""

from __future__ import annotations

import inspect
import json

import onnx
import torch
from torch import nn

from edgeq.errors import ExportError

METADATA_KEY = "edgeq.generation"
# example sizes for tracing: none may be 0 or 1 (torch.export specializes those), all distinct
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 5


def is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "get_input_embeddings") and hasattr(model, "config")


def input_names(num_layers: int) -> list[str]:
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def output_names(num_layers: int) -> list[str]:
    return ["logits", *(f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))]


class CausalLMWithCache(nn.Module):
    """``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)`` with the cache flat,
    keys and values alternating per layer."""

    def __init__(self, lm: nn.Module, num_layers: int):
        super().__init__()
        self.lm, self.num_layers = lm, num_layers
        params = inspect.signature(lm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()  # no config: full layers even where the model slides a window (see the module doc)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=True, **{self._cache_arg: cache})
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_shape(model: nn.Module) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) read from a real forward with a cache, so that every
    config's naming (``head_dim``, ``num_key_value_heads``, ...) is taken as the model uses it; a
    model whose layers keep something other than one growing key/value pair is refused."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 2, dtype=torch.int64), use_cache=True, **{kwarg: cache})
    kinds = {type(layer) for layer in cache.layers}
    if not cache.layers or kinds != {DynamicLayer}:
        names = ", ".join(sorted(k.__name__ for k in kinds)) or "none"
        raise ExportError(f"{type(model).__name__}: KV-cache export needs the standard cache (DynamicLayer per layer), "
                          f"the model uses {names}")
    keys = cache.layers[0].keys
    return len(cache.layers), int(keys.shape[1]), int(keys.shape[3])


def example_and_shapes(model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int):
    """Example inputs for tracing and their dynamic shapes (batch, seq and past symbolic)."""
    b, s, p = _EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(b, p + s, dtype=torch.int64)
    positions = torch.arange(p, p + s).expand(b, s).contiguous()
    past = tuple(torch.zeros(b, num_kv_heads, p, head_dim) for _ in range(2 * num_layers))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=1 << 16)
    past_len = torch.export.Dim("past", min=0, max=1 << 16)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in past))
    return (ids, mask, positions, *past), shapes


def generation_metadata(model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                        max_context: int | None) -> dict:
    """The ``edgeq.generation`` entry: cache geometry, vocabulary, special tokens, the context
    limit (``max_context`` if given, else the model's ``max_position_embeddings``, else null) and
    the architecture (transformers' ``model_type``, which the compiler checks against what TVM builds)."""
    cfg = model.config
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = getattr(cfg, "eos_token_id", None)
    bos = getattr(gen, "bos_token_id", None)
    if bos is None:
        bos = getattr(cfg, "bos_token_id", None)
    if max_context is None:
        max_context = getattr(cfg, "max_position_embeddings", None)
    return {
        "num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
        "vocab_size": int(model.get_input_embeddings().num_embeddings),
        "max_context": None if max_context is None else int(max_context),
        "eos_token_ids": [] if eos is None else [int(t) for t in ([eos] if isinstance(eos, int) else eos)],
        "bos_token_id": None if bos is None else int(bos),
        "model_type": getattr(cfg, "model_type", None),
    }


def finish_proto(proto: onnx.ModelProto, metadata: dict) -> None:
    """Name the attention mask's length ``past + seq`` (torch names it after an internal symbol) and
    record the generation metadata."""
    mask = next(i for i in proto.graph.input if i.name == "attention_mask")
    mask.type.tensor_type.shape.dim[1].dim_param = "past + seq"
    kept = [kv for kv in proto.metadata_props if kv.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))


def read_generation_metadata(model: onnx.ModelProto | str) -> dict | None:
    """The ``edgeq.generation`` entry of a KV-cache file, or None for a file without one."""
    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    entry = next((kv.value for kv in proto.metadata_props if kv.key == METADATA_KEY), None)
    return None if entry is None else json.loads(entry)
