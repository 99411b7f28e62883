"""SmolLM2-135M ONNX file sizes at each weight format, as a ratio of the float32 file, and the
export time; every quantized file is also run by stock onnxruntime (accuracy level 0) and
compared with its PyTorch model on one prompt, and with a float64 evaluation of the same PyTorch
model, whose distance to PyTorch's float32 output is the floor below which no float32 runtime can
be held (``edgeq.runtime.float_floor``).

The tied embedding/lm_head table (28 M of the 134.5 M parameters) is quantized too (RTN, 4 bits,
the same group size): the embedding gathers packed rows and the lm_head is a LowBitLinear over the
same packed tensor, so the file holds it once. Decoder linears use the named RTN preset.

    python benchmarks/export_sizes.py [--out DIR] [--keep] [--all]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402

import edgeq  # noqa: E402
from edgeq._table import format_table  # noqa: E402
from edgeq.model_info import model_info  # noqa: E402
from edgeq.models.smollm2 import load_smollm2  # noqa: E402
from edgeq.quant.embedding import quantize_embeddings  # noqa: E402
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge  # noqa: E402
from edgeq.runtime.ort import ort_session  # noqa: E402

# the ceilings on the file size relative to float32
SIZE_BARS = {"W4": 0.16, "W2": 0.10}

# (label, preset, embedding bits, group, opset, weight_format)
# SmolLM2's hidden size 576 is not a multiple of 128: the g128 preset (group_fallback) gives
# q/k/v/o/gate/up groups of 64 and down_proj groups of 128. The embedding table uses groups of 64.
CASES = [
    ("float32", None, None, None, 21, "auto"),
    ("W4 g128 RTN, DQ+MatMul", "w4g128-rtn", 4, 64, 21, "auto"),
    ("W2 g64 RTN, LowBitLinear", "w2g64-rtn", 4, 64, 21, "auto"),
]
if "--all" in sys.argv:
    CASES += [
        ("W4 g64 RTN, LowBitLinear", "w4g64-rtn", 4, 64, 21, "edgeq"),
        ("W3 g64 RTN, LowBitLinear", "w3g64-rtn", 4, 64, 21, "auto"),
        ("W2 g64 RTN, uint2 DQ (opset 25)", "w2g64-rtn", 4, 64, 25, "auto"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--all", action="store_true", help="also the edgeq-format W4, W3 and opset-25 W2 files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgeq-sizes-"))
    base, tokenizer = load_smollm2()
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    rows, float_bytes = [], None
    try:
        for label, preset, emb_bits, group, opset, fmt in CASES:
            model = copy.deepcopy(base) if preset is None else edgeq.quantize(base, preset)
            if emb_bits:
                quantize_embeddings(model, emb_bits, group)
            path = out / f"{label.split(',')[0].replace(' ', '_').lower()}_{fmt}_{opset}.onnx"
            start = time.perf_counter()
            edgeq.export(model, ids, path, opset=opset, weight_format=fmt)
            seconds = time.perf_counter() - start
            info = model_info(path)
            float_bytes = float_bytes or info.file_bytes
            session = ort_session(path, threads=1)
            got = session.run(None, {"input_ids": ids.numpy()})[0]
            check = judge(got, causal_lm_logits(model, ids), float64_logits(model, ids))
            ratio = info.file_bytes / float_bytes
            bar = SIZE_BARS.get(label.split()[0])
            rows.append([label, f"{info.file_bytes / 2**20:.1f}", f"{ratio:.3f}",
                         "-" if bar is None else f"<= {bar} {'yes' if ratio <= bar else 'NO'}",
                         f"{info.bits_per_weight:.2f}", ", ".join(f"{k} {v}" for k, v in info.edgeq_ops.items()) or "-",
                         f"{seconds:.1f}", f"{check.err:.1e}", f"{check.floor:.1e}", f"{check.err_vs_float64:.1e}",
                         "yes" if check.ok else "NO"])
            print(format_table(HEADERS, rows[-1:]), flush=True)
            del model, session
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(format_table(HEADERS, rows))
    append_results(
        "SmolLM2-135M ONNX export: file size vs float32 and export time",
        markdown_table(HEADERS, rows),
        notes=("Sizes include scales, zero points and the quantized tied embedding/lm_head table (RTN 4-bit, "
               "groups of 64, stored once). 'DQ+MatMul' = uint4/uint2 blocked DequantizeLinear, which "
               "onnxruntime fuses into MatMulNBits; LowBitLinear = packed uint8 edgeq op (3-bit always, 2-bit "
               "below opset 25). Errors are max |a - b| / max |PyTorch float32| on one 13-token prompt, onnxruntime "
               "at accuracy level 0: 'ORT err' against PyTorch float32, 'f32 floor' PyTorch float32 against a float64 "
               "evaluation of the same quantized model (its own rounding error), 'ORT vs f64' onnxruntime against that "
               "float64 value. 'matches' applies edgeq.runtime.float_floor.judge: ORT err <= max(1e-4, 2 floor) and "
               "ORT vs f64 <= max(1e-4, floor). Export time is edgeq.export alone (dynamo export, rewrite, checker, "
               "write), 1 torch thread."),
    )
    return 0


HEADERS = ["weights", "file MiB", "vs float32", "size bar", "bits/weight", "edgeq ops", "export s", "ORT err",
           "f32 floor", "ORT vs f64", "matches"]

if __name__ == "__main__":
    sys.exit(main())
