"""Shared parts of the low-rank benchmarks: their command line, real SmolLM2-135M weights with
the activations that reach them, a best-of-N timer and the relative error."""

from __future__ import annotations

import argparse
import time

import torch

def parse_args(description: str, argv=None, threads_help: str = "torch threads") -> argparse.Namespace:
    """--size (the Gaussian/weight-like case), --json, --threads (set for torch here) and --no-record."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", type=int, default=1, help=threads_help)
    p.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


# one attention and one MLP input of an early, a middle and a late block
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.14.mlp.down_proj", "model.layers.29.mlp.gate_proj")


def smollm2_layers(names=LAYERS, tokens: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (weight [out, in], inputs [tokens, in])} captured on the start of WikiText-2 test."""
    from edgeq.models.smollm2 import load_smollm2
    from edgeq.models.wikitext import find_wikitext

    model, tok = load_smollm2()
    text = find_wikitext()
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


def best_time(fn, repeats: int = 3):
    """(result, best wall time in seconds of ``repeats`` runs of ``fn``)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def rel_error(approx: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||approx - ref|| / ||ref||."""
    return float((approx - ref).norm() / ref.norm())
