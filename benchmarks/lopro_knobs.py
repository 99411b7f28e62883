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
# (rank, Hadamard/salient block size, salient blocks, factor dtype, group size of the low-bit core)
CONFIGS = [(0, 64, 0, "float16", 64), (8, 64, 0, "float16", 64), (0, 64, 1, "float16", 64), (8, 64, 1, "float16", 64),
           (16, 64, 1, "float16", 64), (8, 64, 1, "int8", 64), (8, 64, 0, "int8", 64), (0, 64, 0, "float16", 32),
           (8, 64, 0, "int8", 32), (0, 32, 1, "float16", 32), (8, 32, 1, "int8", 32), (0, 64, 0, "float16", 16)]


def gptq_at(line, bpw):
    """GPTQ's error at ``bpw`` bits/weight, linear between its measured groups (extended flat past the ends)."""
    (b0, e0), *rest = sorted(line)
    if bpw <= b0:
        return e0
    for b1, e1 in rest:
        if bpw <= b1:
            return e0 + (e1 - e0) * (bpw - b0) / (b1 - b0)
        b0, e0 = b1, e1
    return e0


def ranking(rows, top=4) -> str:
    """The LoPRo settings with the lowest mean "÷ GPTQ at same bits" over the bit widths."""
    ratios = {}
    for bits, method, rank, block, salient, factors, *_, ratio in rows:
        if ratio:
            ratios.setdefault(f"{method} rank {rank} {factors} block {block} salient {salient}".replace("  ", " "),
                              []).append(float(ratio))
    best = sorted(ratios.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))[:top]
    return "; ".join(f"{name}: {sum(r) / len(r):.3f}" for name, r in best)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
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
        line = []  # GPTQ's (bits/weight, error) points, for the error at LoPRo's bits
        for group in (64, 32, 16):
            e, b = score(lambda w, h: (gptq_quantize_weight(w, h, bits, group).dequantize(), bits + 24 / group))
            line.append((b, e))
            rows.append([bits, f"GPTQ g{group}", "", "", "", "", f"{b:.3f}", f"{e:.4f}", ""])
            print(rows[-1], flush=True)
        for rank, block, salient, factors, group in CONFIGS:

            def make(w, h):
                layer = lopro_linear(w, h, bits=bits, group_size=group, rank=rank, block_size=block, salient_blocks=salient,
                                     factor_dtype=factors)
                return layer.dequantized_weight(), layer.bits_per_weight

            e, b = score(make)
            rows.append([bits, f"LoPRo g{group}", rank, block, salient, factors if rank else "", f"{b:.3f}", f"{e:.4f}",
                         f"{e / gptq_at(line, b):.3f}"])
            print(rows[-1], flush=True)
    headers = ["bits", "method", "rank", "block", "salient blocks", "factors", "bits/weight", "mean rel. output error",
               "÷ GPTQ at same bits"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_record:
        append_results("Low-rank: LoPRo knob sweep on SmolLM2-135M layers (held-out output error)", table,
                       f"Layers: {', '.join(LAYERS)}. Hessian from {args.tokens // 2} WikiText-2 test tokens, error on the next "
                       f"{args.tokens // 2}. GPTQ: edgeq.quant.gptq with act-order, asymmetric. LoPRo: GPTQ in the "
                       "permuted block-Hadamard basis, salient blocks (of the block size) at 8 bits, factors as listed (int8: one "
                       "float16 scale per rank component). \"÷ GPTQ at same bits\": the error over GPTQ's error at the same bits/weight, "
                       "linear between the GPTQ g64/g32/g16 points (< 1: the setting is worth its bits). Settings by that ratio "
                       f"averaged over 3 and 2 bits, best first: {ranking(rows)}. LoPRo's defaults are taken from the top of "
                       "this list (edgeq/quant/lopro.py says which and why).")


if __name__ == "__main__":
    main()
