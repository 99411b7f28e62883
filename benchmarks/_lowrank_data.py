"""Real SmolLM2-135M weights and the activations that reach them, for the low-rank benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

WIKITEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
# one attention and one MLP input of an early, a middle and a late block
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.14.mlp.down_proj", "model.layers.29.mlp.gate_proj")


def smollm2_layers(names=LAYERS, tokens: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (weight [out, in], inputs [tokens, in])} captured on the start of WikiText-2 test."""
    from edgeq.models.smollm2 import load_smollm2

    model, tok = load_smollm2()
    text = Path("/work/shared/data/wikitext-2-raw/wiki.test.raw")
    text = text if text.exists() else WIKITEXT
    ids = tok(text.read_text()[:20000], return_tensors="pt").input_ids[:, :tokens]
    captured = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: captured.__setitem__(n, args[0].detach().reshape(-1, m.in_features).clone()))
        for n in names]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {n: (model.get_submodule(n).weight.detach().clone(), captured[n]) for n in names}
