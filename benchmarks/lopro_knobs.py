"""How LoPRo's defaults (rank, block size, salient blocks) were chosen: layer output error on
real SmolLM2-135M layers against GPTQ, with the bits per weight each setting spends.

The first half of the captured tokens builds the Hessian, the second half measures
|X (W - Ŵ)^T|_F / |X W^T|_F (held-out tokens). Summed over the layers in ``LAYERS``.

    python benchmarks/lopro_knobs.py [--tokens 1024] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402
from _lowrank_data import smollm2_layers  # noqa: E402

from edgeq.quant.gptq import gptq_quantize_weight  # noqa: E402
from edgeq.quant.lopro import lopro_linear  # noqa: E402

LAYERS = ("model.layers.2.self_attn.o_proj", "model.layers.15.mlp.up_proj", "model.layers.28.self_attn.v_proj")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    data = smollm2_layers(LAYERS, tokens=args.tokens)
    prepared = []
    for name, (w, x) in data.items():
        half = x.shape[0] // 2
        fit, held = x[:half], x[half:]
        prepared.append((w, fit.T @ fit, held))

    def score(make):
        errs, bits, n = 0.0, 0.0, 0
        for w, h, held in prepared:
            w_hat, bpw = make(w, h)
            errs += float((held @ (w - w_hat).T).norm() / (held @ w.T).norm())
            bits += bpw * w.numel()
            n += w.numel()
        return errs / len(prepared), bits / n

    rows = []
    for bits in (3, 2):
        for group in (64, 32):
            e, b = score(lambda w, h: (gptq_quantize_weight(w, h, bits, group).dequantize(), bits + 24 / group))
            rows.append([bits, f"GPTQ g{group}", "", "", "", f"{b:.3f}", f"{e:.4f}"])
        for rank, block, salient in [(0, 64, 0), (8, 64, 0), (0, 64, 1), (8, 64, 1), (16, 64, 1), (8, 192, 0)]:

            def make(w, h):
                layer = lopro_linear(w, h, bits=bits, group_size=64, rank=rank, block_size=block, salient_blocks=salient)
                return layer.dequantized_weight(), layer.bits_per_weight

            e, b = score(make)
            rows.append([bits, "LoPRo g64", rank, block, salient, f"{b:.3f}", f"{e:.4f}"])
            print(rows[-1], flush=True)
    headers = ["bits", "method", "rank", "block", "salient blocks", "bits/weight", "mean rel. output error"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_record:
        append_results("Low-rank: LoPRo knob sweep on SmolLM2-135M layers (held-out output error)", table,
                       f"Layers: {', '.join(LAYERS)}. Hessian from {args.tokens // 2} WikiText-2 test tokens, error on the next "
                       f"{args.tokens // 2}. GPTQ: edgeq.quant.gptq with act-order, asymmetric. LoPRo: GPTQ in the "
                       "permuted block-Hadamard basis, salient blocks at 8 bits, fp16 factors.")


if __name__ == "__main__":
    main()
