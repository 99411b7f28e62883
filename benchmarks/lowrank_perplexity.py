"""Benchmark 1 of the low-rank issue: SmolLM2-135M WikiText-2 perplexity of LoPRo and LRQMM at
W3 and W2, each with its effective bits per weight (low-rank factors and salient blocks
counted), against GPTQ at the same nominal grid and GPTQ given a smaller group size so that it
spends at least the same effective bits.

All decoder-block linears are quantized; embeddings and the tied lm_head stay float32. GPTQ and
LoPRo share the calibration windows (drawn after the evaluated ones, seed 0) and edgeq's
block-by-block Hessian capture. Each quantized model is evaluated as float Linears of its
dequantized weights (the layers' tests check that the inference forms compute exactly that).

    python benchmarks/lowrank_perplexity.py [--windows 40] [--calib 16] [--bits 3 2] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402

import edgeq  # noqa: E402
from edgeq.models.smollm2 import load_smollm2  # noqa: E402
from edgeq.models.wikitext import SEQ_LEN, calibration_windows, perplexity, wikitext_tokens  # noqa: E402
from edgeq.quant import set_submodule  # noqa: E402
from edgeq.quant.lopro import LoProLinear  # noqa: E402
from edgeq.quant.lrqmm import LowRankCorrectedLinear  # noqa: E402
from edgeq.quant.weight_only import WeightOnlyLinear  # noqa: E402
from edgeq.quant.weight_only_recipes import GPTQRecipe  # noqa: E402

QUANTIZED = (LoProLinear, LowRankCorrectedLinear, WeightOnlyLinear)
# group sizes that divide SmolLM2's 576 and 1536 input features and pack at 2 and 3 bits
GROUPS = (192, 96, 64, 48, 32, 24, 16)


def effective_bits(model: nn.Module) -> float:
    """Bits per weight over the quantized layers (outermost quantized modules only)."""
    inner = {id(c) for m in model.modules() if isinstance(m, (LoProLinear, LowRankCorrectedLinear)) for c in m.modules() if c is not m}
    layers = [m for m in model.modules() if isinstance(m, QUANTIZED) and id(m) not in inner]
    return 8 * sum(m.weight_bytes() for m in layers) / sum(m.in_features * m.out_features for m in layers)


def as_float(model: nn.Module) -> nn.Module:
    for name, m in list(model.named_modules()):
        if isinstance(m, QUANTIZED) and name:
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(m.dequantized_weight())
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            set_submodule(model, name, lin)
    return model


def gptq_bits(bits: int, group: int) -> float:
    return bits + 24 / group  # float16 scale + uint8 zero per group


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=40)
    p.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens (GPTQ, LoPRo)")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--no-float", action="store_true", help="skip the float32 row")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    tokens = wikitext_tokens(tok)
    calib = list(calibration_windows(tokens, args.calib, SEQ_LEN, skip=args.windows, seed=0).split(4))
    rows = []

    def row(label, recipe, use_calib):
        t0 = time.perf_counter()
        q = edgeq.quantize(model, recipe, calib=calib if use_calib else None)
        seconds = time.perf_counter() - t0
        bpw = effective_bits(q)
        ppl = perplexity(as_float(q), tokens, args.windows)
        rows.append([label, f"{bpw:.3f}", f"{ppl:.2f}", f"{seconds:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
        return bpw

    if not args.no_float:
        rows.append(["float32", "32", f"{perplexity(model, tokens, args.windows):.2f}", ""])
        print(" | ".join(rows[-1]), flush=True)
    for bits in args.bits:
        row(f"GPTQ W{bits} g64", GPTQRecipe(bits=bits, group_size=64, skip=("lm_head",)), True)
        lopro_bpw = row(f"LoPRo W{bits} (w{bits}-lopro)", f"w{bits}-lopro", True)
        row(f"LRQMM W{bits} (w{bits}-lrqmm)", f"w{bits}-lrqmm", False)
        group = max((g for g in GROUPS if gptq_bits(bits, g) >= lopro_bpw), default=GROUPS[-1])
        row(f"GPTQ W{bits} g{group} (≥ LoPRo's bits)", GPTQRecipe(bits=bits, group_size=group, skip=("lm_head",)), True)
    headers = ["method", "bits/weight", f"WikiText-2 ppl ({args.windows}×{SEQ_LEN})", "quantize s"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_record:
        append_results("Low-rank: SmolLM2-135M perplexity, LoPRo and LRQMM vs GPTQ at matched bits", table, (
            f"All decoder-block linears quantized; embeddings and the tied lm_head float32. Bits/weight count packed "
            f"integers, float16 scales, uint8 zeros, low-rank factors and LoPRo's 8-bit salient block (not the int64 "
            f"permutation index, 576 or 1536 entries per layer). {args.calib} calibration windows of {SEQ_LEN} tokens "
            f"(seed 0) after the evaluated ones, shared by GPTQ and LoPRo; GPTQ act-order, damp 0.01, asymmetric. "
            f"Group 64 is the base grid because 128 does not divide SmolLM2's 576 input features. The matched-bits GPTQ "
            f"row takes the largest group whose bits/weight is at least LoPRo's."))


if __name__ == "__main__":
    main()
