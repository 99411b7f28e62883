"""Shared by the KV-cache tests: tiny random-init causal LMs and a token-by-token onnxruntime run."""

from __future__ import annotations

import numpy as np
import torch

import edgeq
from edgeq.quant.embedding import quantize_embeddings

VOCAB = 256


def tiny_causal_lm(arch: str = "llama", **overrides):
    """A 2-layer random-init model of ``arch`` (grouped-query attention where the architecture has
    it, tied embedding). Phi-3 has fused qkv / gate_up projections; Gemma and Gemma2 an RMSNorm with
    a ``1 + w`` weight, an embedding scaled by sqrt(hidden) and GELU; Gemma2 also soft-caps
    attention scores and logits and alternates sliding-window (here 8 tokens, shorter than the
    tests' contexts, so the window is really applied) and full layers; GPT-2 has ``Conv1D``
    projections, learned positions, LayerNorm and GELU."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }[arch]
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                    max_position_embeddings=128)
    if arch in ("phi3", "gemma", "gemma2", "gpt2"):  # their defaults name tokens outside the tiny vocabulary
        settings.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "mistral":
        settings["sliding_window"] = None
    if arch in ("qwen3", "gemma", "gemma2"):
        settings["head_dim"] = 16
    if arch == "gemma2":
        settings["sliding_window"] = 8
    if arch == "gpt2":
        settings = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, tie_word_embeddings=True,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    settings.update(overrides)
    torch.manual_seed(0)
    return model_cls(config_cls(**settings)).eval()


def quantized(model, bits: int = 4, embedding_bits: int = 4, group_size: int = 32):
    """Weight-only RTN linears plus the tied embedding / lm_head as one packed table."""
    model = edgeq.quantize(model, f"w{bits}g{group_size * 2}-rtn")
    quantize_embeddings(model, embedding_bits, group_size)
    return model


def steps_of(lengths: list[int]) -> list[slice]:
    starts = np.cumsum([0, *lengths[:-1]])
    return [slice(int(s), int(s + n)) for s, n in zip(starts, lengths)]


def ort_logits_by_steps(session, ids: np.ndarray, lengths: list[int], meta: dict) -> np.ndarray:
    """Run ``ids`` [1, T] through the KV-cache file in chunks of ``lengths`` (the first a prefill
    on an empty cache, then decode steps) feeding each step's ``present`` back as ``past``; the
    logits of every position, [T, vocab]."""
    shape = (1, meta["num_kv_heads"], 0, meta["head_dim"])
    past = [np.zeros(shape, np.float32) for _ in range(2 * meta["num_layers"])]
    names = [f"past_key_values.{i}.{k}" for i in range(meta["num_layers"]) for k in ("key", "value")]
    out = []
    for step in steps_of(lengths):
        n = step.stop - step.start
        feed = {"input_ids": ids[:, step].astype(np.int64),
                "attention_mask": np.ones((1, step.stop), np.int64),
                "position_ids": np.arange(step.start, step.stop, dtype=np.int64)[None]}
        feed.update(zip(names, past))
        logits, *past = session.run(None, feed)
        assert logits.shape == (1, n, meta["vocab_size"])
        assert all(p.shape == shape[:2] + (step.stop,) + shape[3:] for p in past)
        out.append(logits[0])
    return np.concatenate(out)


class OrtSession:
    """The session protocol on onnxruntime, for the tests (``edgeq.runtime.generation`` has the
    product's): the cache is the host arrays each step returns."""

    def __init__(self, path, meta: dict):
        from edgeq.runtime.ort import ort_session

        self.session, self.meta, self.max_context = ort_session(path), meta, meta["max_context"]
        self.reset()

    def reset(self) -> None:
        shape = (1, self.meta["num_kv_heads"], 0, self.meta["head_dim"])
        self.past = [np.zeros(shape, np.float32) for _ in range(2 * self.meta["num_layers"])]
        self.position = 0

    def prefill(self, input_ids) -> np.ndarray:
        ids = np.asarray(input_ids, np.int64).reshape(1, -1)
        n, pos = ids.shape[1], self.position
        names = [f"past_key_values.{i}.{k}" for i in range(self.meta["num_layers"]) for k in ("key", "value")]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, pos + n), np.int64),
                "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None], **dict(zip(names, self.past))}
        logits, *self.past = self.session.run(None, feed)
        self.position += n
        return logits[0, -1]

    def decode(self, token_id: int) -> np.ndarray:
        return self.prefill([token_id])


def greedy(session, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy generation on a session: (the new token ids, the logits of every step [new_tokens, vocab])."""
    session.reset()
    logits = [session.prefill(prompt)]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < new_tokens:
        logits.append(session.decode(tokens[-1]))
        tokens.append(int(logits[-1].argmax()))
    return tokens, np.stack(logits)
