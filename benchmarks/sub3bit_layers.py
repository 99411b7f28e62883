"""Issue #20 settings on real SmolLM2-135M layers: held-out output error |X (W - Ŵ)^T| / |X W^T|
at the bits/weight each spends (everything stored), a cheap stand-in for the perplexity table
on a shared CPU.

Rows: GPTQ (act-order) with dynamic groups (scale fixed when a group's first column comes up)
and with static groups (from the original weight, before the act-order pass) at W3 g64 and W2
g64; LoPRo at budgets near 3.25 and 2.5 bits/weight (rank 0 or chosen per layer by the R1SVD
residual score, int8 factors, salient block off or one 4-bit block), with GPTQ at the nearest
group spending at least as many bits. Hessian from the first half of the captured tokens, error
on the second half.

    python benchmarks/sub3bit_layers.py [--tokens 2048] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402
from _lowrank_data import smollm2_layers  # noqa: E402

from edgeq.quant.gptq import gptq_quantize_weight  # noqa: E402
from edgeq.quant.lopro import lopro_linear  # noqa: E402

LAYERS = ("model.layers.2.self_attn.o_proj", "model.layers.15.mlp.up_proj", "model.layers.28.self_attn.v_proj")
# label, bits, LoPRo knobs (group, rank, rank_min_gain, block, salient blocks, salient bits)
LOPRO = [("LoPRo W3 g96 rank 0", 3, dict(group_size=96, rank=0, block_size=64, salient_blocks=0)),
         ("LoPRo W3 g96 rank<=8 by score", 3, dict(group_size=96, rank=8, rank_min_gain=0.02, block_size=64,
                                                    salient_blocks=0)),
         ("LoPRo W3 g64 rank 0", 3, dict(group_size=64, rank=0, block_size=64, salient_blocks=0)),
         ("LoPRo W2 g64 rank 0", 2, dict(group_size=64, rank=0, block_size=64, salient_blocks=0)),
         ("LoPRo W2 g64 rank<=8 by score", 2, dict(group_size=64, rank=8, rank_min_gain=0.02, block_size=64,
                                                    salient_blocks=0)),
         ("LoPRo W2 g64 + one 4-bit salient block", 2, dict(group_size=64, rank=0, block_size=64, salient_blocks=1,
                                                             salient_bits=4))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    prepared = []
    for w, x in smollm2_layers(LAYERS, tokens=args.tokens).values():
        half = x.shape[0] // 2
        prepared.append((w, 2 * x[:half].T @ x[:half] / half, x[half:]))

    def score(make):
        errs, bits, n, t0 = 0.0, 0.0, 0, time.perf_counter()
        for w, h, held in prepared:
            w_hat, bpw = make(w, h)
            errs += float((held @ (w - w_hat).T).norm() / (held @ w.T).norm())
            bits += bpw * w.numel()
            n += w.numel()
        return errs / len(prepared), bits / n, time.perf_counter() - t0

    rows = []

    def add(label, make):
        e, b, s = score(make)
        rows.append([label, f"{b:.3f}", f"{e:.4f}", f"{s:.1f}"])
        print(" | ".join(rows[-1]), flush=True)

    for bits in (3, 2):
        for group in (64, 32):
            for static in (False, True):
                add(f"GPTQ W{bits} g{group} act-order, {'static' if static else 'dynamic'} groups",
                    lambda w, h, static=static, group=group, bits=bits: (
                        gptq_quantize_weight(w, h, bits, group, static_groups=static).dequantize(), bits + 24 / group))
    for label, bits, knobs in LOPRO:
        def make(w, h, bits=bits, knobs=knobs):
            layer = lopro_linear(w, h, bits=bits, factor_dtype="int8", clip_steps=20, **knobs)
            return layer.dequantized_weight(), layer.bits_per_weight
        add(label, make)
    table = markdown_table(["setting", "bits/weight (all stored)", "mean rel. held-out output error", "seconds"], rows)
    print(table)
    if not args.no_record:
        append_results("Sub-3-bit settings on SmolLM2-135M layers (held-out output error)", table,
                       f"Layers: {', '.join(LAYERS)}; Hessian from {args.tokens // 2} WikiText-2 test tokens, error on "
                       f"the next {args.tokens // 2}. GPTQ: edgeq.quant.gptq, act-order, damp 0.01, asymmetric, no clip "
                       "search; LoPRo: int8 factors, clip search of 20 ratios, bits/weight with its int16 permutation. "
                       f"{args.threads} torch thread(s), shared CPU (seconds are wall time under load).")


if __name__ == "__main__":
    main()
