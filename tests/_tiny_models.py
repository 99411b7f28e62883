"""Small random-init models and settings shared by the byte- and TIR-invariance tests."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Quantizers on one thread, so that float reductions (and the rounded integers) do not depend
    on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_llama(num_hidden_layers: int = 2, num_key_value_heads: int = 2, **config):
    """A seeded 2-layer-class Llama (hidden 64, 4 heads, tied table); ``config``: more LlamaConfig fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=4, num_key_value_heads=num_key_value_heads, tie_word_embeddings=True, **config)
    return LlamaForCausalLM(cfg).eval()
