"""Float targets (``AllocatedRecipe(float_targets=True)``) on SmolLM2-135M's first blocks: every
layer at one LoPRo grid, the truncated model's last hidden state against float on held-out
WikiText-2 windows (relative mean squared error), without float targets and at each ridge
``float_target_damp``. A cheap stand-in for a 20-window perplexity run, to pick the ridge.

    python benchmarks/float_targets.py [--blocks 8] [--calib 16] [--damps 0.01 0.1 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, print_and_record  # noqa: E402

import edgeq  # noqa: E402
from edgeq.models.smollm2 import load_smollm2  # noqa: E402
from edgeq.models.wikitext import SEQ_LEN, calibration_windows, wikitext_tokens  # noqa: E402
from edgeq.quant.allocate import AllocatedRecipe  # noqa: E402

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=8, help="decoder blocks kept (the rest are cut off)")
    p.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens")
    p.add_argument("--windows", type=int, default=4, help="held-out windows the error is measured on (drawn after the calibration windows)")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--group", type=int, default=192)
    p.add_argument("--damps", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2()
    model.model.layers = model.model.layers[:args.blocks]
    model.config.num_hidden_layers = args.blocks
    tokens = wikitext_tokens(tokenizer)
    # the calibration draw, then the windows the same seeded draw takes next: neither calibration
    # nor among the 20 that weight_only.py evaluates, so the ridge is not picked on its test windows
    drawn = calibration_windows(tokens, args.calib + args.windows, SEQ_LEN, skip=20, seed=0)
    calib, held_out = list(drawn[:args.calib].split(8)), drawn[args.calib:]

    def last_hidden(m) -> torch.Tensor:
        with torch.no_grad():
            return m.model(held_out).last_hidden_state

    ref = last_hidden(model)
    plan = tuple((f"model.layers.{i}.{n}", "lopro", args.bits, args.group) for i in range(args.blocks) for n in LINEARS)
    base = AllocatedRecipe(skip=("lm_head",), grids=(), lopro_grids=((args.bits, args.group),), plan=plan)
    rows = []
    for damp in [None, *args.damps]:
        recipe = base if damp is None else dataclasses.replace(base, float_targets=True, float_target_damp=damp)
        t = time.perf_counter()
        q = edgeq.quantize(model, recipe, calib=calib)
        seconds = time.perf_counter() - t
        error = float((last_hidden(q) - ref).square().mean() / ref.square().mean())
        rows.append(["no" if damp is None else f"yes, damp {damp:g}", f"{error:.4f}", f"{seconds:.0f} s"])
        print(rows[-1], flush=True)
    table = markdown_table(["float targets", "last hidden state rel. squared error", "quantize time"], rows)
    notes = (f"SmolLM2-135M cut to its first {args.blocks} blocks, every linear LoPRo W{args.bits} g{args.group} (rank 0, "
             f"Hadamard blocks of 64), {args.calib} calibration windows of {SEQ_LEN} tokens (as benchmarks/weight_only.py "
             f"draws them), error on {args.windows} other windows of the same draw (neither calibration nor evaluated); {args.threads} torch thread(s).")
    print_and_record("Float targets on SmolLM2-135M's first blocks (issue #20)", table, notes, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
