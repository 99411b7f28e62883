"""What int8 activations (``edgeq compile --act-bits 8``) cost in accuracy: WikiText-2 perplexity of
SmolLM2-135M as the generation artifact quantizes it (W4 g128 RTN, tied embedding / lm_head at
4 bits in groups of 64) with float activations and with the packed linears' inputs quantized to
int8 per row and weight group (``edgeq.quant.int8_activations``: the integer kernels' arithmetic,
checked against a compiled artifact by tests/targets/test_generation.py), plus float32.

    python benchmarks/act_bits_perplexity.py --windows 8

The ratio to float activations is paired (the same windows): exp(mean of the per-window NLL
differences), with the standard error of that mean.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, print_and_record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=8, help="windows of 512 tokens (the first ones of the test text)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import edgeq
    from edgeq.models.smollm2 import load_smollm2
    from edgeq.models.wikitext import window_nll, windows_of, wikitext_tokens
    from edgeq.quant.embedding import quantize_embeddings
    from edgeq.quant.int8_activations import int8_activations

    model, tokenizer = load_smollm2()
    windows = windows_of(wikitext_tokens(tokenizer))[:args.windows]
    nll = {"float32": window_nll(model, windows, desc="float32")}
    model = edgeq.quantize(model, "w4g128-rtn")
    quantize_embeddings(model, 4, 64)
    nll["W4 g128, e4, float activations"] = window_nll(model, windows, desc="float act")
    with int8_activations(model):
        nll["W4 g128, e4, int8 activations (act_bits=8)"] = window_nll(model, windows, desc="int8 act")
    base = nll["W4 g128, e4, float activations"].double()
    rows = []
    for name, values in nll.items():
        d = values.double() - base
        se = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
        rows.append([name, f"{math.exp(values.double().mean().item()):.2f}", f"{math.exp(d.mean().item()):.4f}",
                     f"{100 * se:.2f}%" if name != "W4 g128, e4, float activations" else ""])
    table = markdown_table(["model", "perplexity", "x float activations (paired)", "std. error of the log ratio"], rows)
    notes = (f"SmolLM2-135M-Instruct, WikiText-2 test, the first {args.windows} windows of 512 tokens (a short run on "
             "a shared 2-core machine: the paired ratio is what to read, its standard error says how well "
             f"{args.windows} windows pin it down), PyTorch at {args.threads} threads. int8 activations: per row and "
             "per weight group of K, symmetric, round half to even, as the act_bits=8 kernels.")
    print_and_record("Perplexity cost of int8 activations (act_bits=8) on SmolLM2-135M", table, notes,
                     record=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
