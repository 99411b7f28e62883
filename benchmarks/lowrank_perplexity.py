"""Benchmark 1 of the low-rank issue: SmolLM2-135M WikiText-2 perplexity of LoPRo and LRQMM at
W3 and W2, each with its effective bits per weight (low-rank factors and salient blocks
counted), against GPTQ at the same nominal grid and GPTQ given a smaller group size so that it
spends at least the same effective bits.

All decoder-block linears are quantized; embeddings and the tied lm_head stay float32. GPTQ and
LoPRo share the calibration windows (drawn after the evaluated ones, seed 0) and edgeq's
block-by-block Hessian capture. Each quantized model is evaluated as float Linears of its
dequantized weights (the layers' tests check that the inference forms compute exactly that).

    python benchmarks/lowrank_perplexity.py [--windows 40] [--calib 16] [--bits 3 2] [--blocks 30] [--threads 1]
        [--json ROWS] [--from-json ROWS ...] [--no-record]

``--blocks N`` quantizes only the first N decoder blocks: a cheaper run on a shared CPU.
``--json ROWS`` writes each finished row as it comes (a run cut short keeps them);
``--from-json`` builds the table from such files instead of running.
The windows and calibration windows are those of ``benchmarks/weight_only.py`` with the same
``--windows``/``--calib`` (``edgeq.models.wikitext``), so its rows compare with that table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from edgeq.quant.base import set_submodule  # noqa: E402
from edgeq.quant.lopro import LoProLinear  # noqa: E402
from edgeq.quant.lrqmm import LowRankCorrectedLinear  # noqa: E402
from edgeq.quant.weight_only import WeightOnlyLinear  # noqa: E402
from edgeq.quant.weight_only_recipes import GPTQRecipe  # noqa: E402
from edgeq.recipes import resolve_recipe  # noqa: E402

QUANTIZED = (LoProLinear, LowRankCorrectedLinear, WeightOnlyLinear)
# group sizes that divide SmolLM2's 576 and 1536 input features and pack at 2 and 3 bits
GROUPS = (192, 96, 64, 48, 32, 24, 16)
METHODS = ("lopro", "gptq-matched", "gptq-g64", "lrqmm")


def effective_bits(model: nn.Module) -> float:
    """Bits per weight over the quantized layers (outermost quantized modules only)."""
    inner = {id(c) for m in model.modules() if isinstance(m, (LoProLinear, LowRankCorrectedLinear)) for c in m.modules() if c is not m}
    layers = [m for m in model.modules() if isinstance(m, QUANTIZED) and id(m) not in inner]
    return 8 * sum(m.weight_bytes() for m in layers) / sum(m.in_features * m.out_features for m in layers)


def as_float(model: nn.Module) -> nn.Module:
    for name, m in list(model.named_modules()):
        if isinstance(m, QUANTIZED) and name:
            lin = nn.Linear(m.in_features, m.out_features, bias=getattr(m, "bias", None) is not None
                            or getattr(getattr(m, "core", None), "bias", None) is not None)
            bias = m.core.bias if isinstance(m, LowRankCorrectedLinear) else m.bias
            with torch.no_grad():
                lin.weight.copy_(m.dequantized_weight())
                if bias is not None:
                    lin.bias.copy_(bias)
            set_submodule(model, name, lin)
    return model


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".e") else int(text)


def gptq_bits(bits: int, group: int) -> float:
    return bits + 24 / group  # float16 scale + uint8 zero per group


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=40)
    p.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens (GPTQ, LoPRo)")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    p.add_argument("--blocks", type=int, default=30, help="quantize the linears of the first N decoder blocks only")
    p.add_argument("--no-float", action="store_true", help="skip the float32 row")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="rows per bit width (gptq-matched needs lopro: it matches LoPRo's bits)")
    p.add_argument("--lopro", nargs="+", default=[], metavar="KNOB=INT",
                   help="override w{bits}-lopro's knobs, e.g. rank=0 salient_blocks=0 group_size=16 rank_min_gain=0.02")
    p.add_argument("--gptq", nargs="+", default=[], metavar="KNOB=INT",
                   help="override the GPTQ rows' knobs, e.g. clip_steps=20")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="write the rows to this file as they finish")
    p.add_argument("--from-json", nargs="+", default=None, help="make the table from these --json files")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    headers = ["method", "bits/weight", f"WikiText-2 ppl ({args.windows}×{SEQ_LEN})", "quantize s"]
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())]
        return record(args, headers, rows)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    tokens = wikitext_tokens(tok)
    calib = list(calibration_windows(tokens, args.calib, SEQ_LEN, skip=args.windows, seed=0).split(4))
    rows = []
    skip = ("lm_head",) + tuple(f"model.layers.{i}.*" for i in range(args.blocks, 30))

    def row(label, recipe, use_calib):
        recipe = dataclasses.replace(resolve_recipe(recipe), skip=skip)
        t0 = time.perf_counter()
        q = edgeq.quantize(model, recipe, calib=calib if use_calib else None)
        seconds = time.perf_counter() - t0
        bpw = effective_bits(q)
        ppl = perplexity(as_float(q), tokens, args.windows)
        add([label, f"{bpw:.3f}", f"{ppl:.2f}", f"{seconds:.0f}"])
        return bpw

    def add(r):
        rows.append(r)
        print(" | ".join(r), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows))

    if not args.no_float:
        add(["float32", "32", f"{perplexity(model, tokens, args.windows):.2f}", ""])
    gptq_knobs = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.gptq)}
    gptq_label = "".join(f" {k}={v}" for k, v in gptq_knobs.items())
    for bits in args.bits:  # the "Done when" comparisons first, so that a run cut short has them
        if "lopro" in args.methods:
            knobs = {k: _number(v) for k, v in (kv.split("=", 1) for kv in args.lopro)}
            lopro = dataclasses.replace(resolve_recipe(f"w{bits}-lopro"), **knobs)
            label = f"LoPRo W{bits} (w{bits}-lopro{''.join(f' {k}={v}' for k, v in knobs.items())})"
            lopro_bpw = row(label, lopro, True)
            if "gptq-matched" in args.methods:
                group = max((g for g in GROUPS if gptq_bits(bits, g) >= lopro_bpw), default=GROUPS[-1])
                row(f"GPTQ W{bits} g{group}{gptq_label} (≥ LoPRo's bits)",
                    GPTQRecipe(bits=bits, group_size=group, **gptq_knobs), True)
        if "gptq-g64" in args.methods:
            row(f"GPTQ W{bits} g64{gptq_label}", GPTQRecipe(bits=bits, group_size=64, **gptq_knobs), True)
        if "lrqmm" in args.methods:
            row(f"LRQMM W{bits} (w{bits}-lrqmm)", f"w{bits}-lrqmm", False)
    record(args, headers, rows)


def verdict(rows) -> str:
    """Each LoPRo row's perplexity over that of the GPTQ row right after it that spends no fewer
    bits (the "Done when" figure)."""
    out = []
    for (l_name, l_bits, l_ppl, _), (g_name, g_bits, g_ppl, _) in zip(rows, rows[1:]):
        if l_name.startswith("LoPRo") and "LoPRo's bits" in g_name:
            ratio = float(l_ppl) / float(g_ppl)
            out.append(f"{l_name} {l_ppl} at {l_bits} bits/weight vs {g_name.split(' (')[0]} {g_ppl} at {g_bits}: "
                       f"ratio {ratio:.3f} ({'LoPRo better' if ratio < 1 else 'GPTQ better'})")
    return "; ".join(out) + "." if out else ""


def record(args, headers, rows):
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_record:
        append_results("Low-rank: SmolLM2-135M perplexity, LoPRo and LRQMM vs GPTQ at matched bits", table, (
            f"The linears of decoder blocks 0..{args.blocks - 1} quantized (of 30; the rest float32); embeddings and the tied lm_head float32. Bits/weight count packed "
            f"integers, float16 scales, uint8 zeros, low-rank factors, LoPRo's salient block and its int16 permutation. {args.calib} calibration windows of {SEQ_LEN} tokens "
            f"(seed 0) after the {args.windows} evaluated ones (the windows of benchmarks/weight_only.py with the same "
            f"--windows/--calib), shared by GPTQ and LoPRo; GPTQ act-order, damp 0.01, asymmetric; {args.threads} torch "
            f"thread(s). Group 64 is the base grid because 128 does not divide SmolLM2's 576 input features. The "
            f"matched-bits GPTQ row takes the largest group whose bits/weight is at least LoPRo's."
            + (" Rows from runs of this script with these settings and --json (--bits/--methods split across runs), "
               "merged by this command; quantize seconds are wall time on the shared CPU." if args.from_json else "")
            + " " + verdict(rows)))


if __name__ == "__main__":
    main()
