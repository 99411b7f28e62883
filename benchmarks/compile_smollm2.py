"""SmolLM2-135M W4 (g64 RTN, 4-bit tied embedding/lm_head) compiled by TVM for named targets with
the sequence length kept symbolic: compile time, artifact size, the artifact's weight bytes as a
ratio of the ONNX file's packed weights, and for the host artifact its error against onnxruntime
(MatMulNBits at accuracy level 0) at several sequence lengths, all from one artifact.

    python benchmarks/compile_smollm2.py [--onnx FILE] [--targets cpu,arm64,...] [--seqs 3,21]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402

import edgeq  # noqa: E402
from edgeq._table import format_table  # noqa: E402


def export_w4(out: Path) -> Path:
    import torch

    from edgeq.models.smollm2 import load_smollm2
    from edgeq.quant.embedding import quantize_embeddings

    model, tokenizer = load_smollm2()
    qmodel = edgeq.quantize(model, "w4g64-rtn")
    quantize_embeddings(qmodel, 4, 64)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        return edgeq.export(qmodel, ids, out / "smollm2_w4.onnx")


def host_errors(onnx_path: Path, artifact, seqs: list[int]) -> str:
    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.ort import ort_session

    session, executor = ort_session(onnx_path, accuracy_level=0), TvmExecutor(artifact.path)
    parts = []
    for seq in seqs:
        ids = np.random.default_rng(seq).integers(0, 49152, (1, seq)).astype(np.int64)
        expect = session.run(None, {"input_ids": ids})[0]
        got = executor.run([ids])[0]
        rel = np.abs(got - expect).max() / np.abs(expect).max()
        parts.append(f"seq {seq}: {rel:.2g} (top-1 {(got.argmax(-1) == expect.argmax(-1)).mean():.0%})")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="an exported SmolLM2 W4 file (default: export one)")
    parser.add_argument("--targets", default="cpu,arm64,armv7,cuda-sm80")
    parser.add_argument("--seqs", default="3,21")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeq-compile-"))
    export_seconds = None
    onnx_path = args.onnx
    if onnx_path is None:
        start = time.perf_counter()
        onnx_path = export_w4(work)
        export_seconds = time.perf_counter() - start
    rows = []
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        art = edgeq.compile(onnx_path, target=target, out_dir=work)
        error = host_errors(onnx_path, art, [int(s) for s in args.seqs.split(",")]) if target == "cpu" else "-"
        rows.append([target, f"{art.compile_seconds:.0f}", f"{art.size_bytes / 2**20:.1f}",
                     f"{art.weight_bytes / art.onnx_weight_bytes:.3f}", error])
        print(rows[-1], flush=True)
    headers = ["target", "compile s", "artifact MiB", "weight bytes / ONNX", "host max rel error vs onnxruntime"]
    print(format_table(headers, rows))
    notes = (f"ONNX weights (packed): {art.onnx_weight_bytes / 2**20:.1f} MiB. Sequence length symbolic: one artifact "
             "per target. Wall-clock compile times on a shared machine; ratios between rows only from the same run.")
    if export_seconds is not None:
        notes += f" Export took {export_seconds:.0f} s."
    if not args.no_append:
        append_results("SmolLM2-135M W4 compiled per target (dynamic sequence length)", markdown_table(headers, rows), notes)


if __name__ == "__main__":
    main()
