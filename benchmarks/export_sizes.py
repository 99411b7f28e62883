"""SmolLM2-135M ONNX file sizes at each weight format, as a ratio of the float32 file, and the
export time; every quantized file is also run by stock onnxruntime (accuracy level 0) and
compared with its PyTorch model on one prompt.

The tied embedding/lm_head table (28 M of the 134.5 M parameters) is quantized too (RTN, 4 bits,
the same group size): the embedding gathers packed rows and the lm_head is a LowBitLinear over the
same packed tensor, so the file holds it once. Decoder linears use the named RTN preset.

    python benchmarks/export_sizes.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402

import edgeq  # noqa: E402
from edgeq._table import format_table  # noqa: E402
from edgeq.model_info import model_info  # noqa: E402
from edgeq.models.smollm2 import load_smollm2  # noqa: E402
from edgeq.quant.embedding import quantize_embeddings  # noqa: E402
from edgeq.runtime.ort import ort_session  # noqa: E402

# (label, preset, embedding bits, group, opset, weight_format)
CASES = [
    ("float32", None, None, None, 21, "auto"),
    ("W4 g128 RTN, DQ+MatMul", "w4g128-rtn", 4, 128, 21, "auto"),
    ("W4 g128 RTN, LowBitLinear", "w4g128-rtn", 4, 128, 21, "edgeq"),
    ("W3 g128 RTN, LowBitLinear", "w3g128-rtn", 4, 128, 21, "auto"),
    ("W2 g64 RTN, LowBitLinear", "w2g64-rtn", 4, 64, 21, "auto"),
    ("W2 g64 RTN, uint2 DQ (opset 25)", "w2g64-rtn", 4, 64, 25, "auto"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
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
            session = ort_session(path)
            got = session.run(None, {"input_ids": ids.numpy()})[0]
            with torch.no_grad():
                ref = model(input_ids=ids, use_cache=False).logits.numpy()
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            rows.append([label, f"{info.file_bytes / 2**20:.1f}", f"{info.file_bytes / float_bytes:.3f}",
                         f"{info.bits_per_weight:.2f}", ", ".join(f"{k} {v}" for k, v in info.edgeq_ops.items()) or "-",
                         f"{seconds:.1f}", f"{err:.1e}"])
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
               "same group size, stored once). 'DQ+MatMul' = uint4/uint2 blocked DequantizeLinear, which "
               "onnxruntime fuses into MatMulNBits; LowBitLinear = packed uint8 edgeq op (3-bit always, 2-bit "
               "below opset 25). Max error = max |onnxruntime - PyTorch| / max |PyTorch| on one 13-token prompt, "
               "accuracy level 0. Export time is edgeq.export alone (dynamo export, rewrite, checker, write)."),
    )
    return 0


HEADERS = ["weights", "file MiB", "vs float32", "bits/weight", "edgeq ops", "export s", "max err"]

if __name__ == "__main__":
    sys.exit(main())
