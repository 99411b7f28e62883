"""Integer-only (HAWQ-V3 dyadic) digits CNN: top-1 of float32, W8A8-dyadic and W4A8-dyadic on
the digits test set, and whether onnxruntime and TVM (host CPU) reproduce the PyTorch integer
reference's outputs bit for bit.

    python benchmarks/integer_cnn.py [--no-tvm]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import edgeq  # noqa: E402
from edgeq._table import format_table  # noqa: E402
from edgeq.models import digits_data, load_digits_cnn  # noqa: E402
from edgeq.models.digits_cnn import accuracy  # noqa: E402
from edgeq.passes.integerize import export_integer  # noqa: E402
from edgeq.runtime import OrtExecutor, TvmExecutor  # noqa: E402
from _results import append_results, markdown_table  # noqa: E402

RECIPES = ("w8a8-dyadic", "w4a8-dyadic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tvm", action="store_true", help="skip the TVM compile (about 20 s per model)")
    args = parser.parse_args()
    data, model = digits_data(), load_digits_cnn()
    x = data.x_test.numpy()
    with torch.no_grad():
        float_acc = accuracy(model(data.x_test), data.y_test)
    headers = ["model", "top-1 (%)", "vs float32 (pt)", "ORT mismatches", "TVM mismatches", "ONNX bytes"]
    rows = [["float32", f"{100 * float_acc:.2f}", "", "", "", ""]]
    with tempfile.TemporaryDirectory() as tmp:
        for name in RECIPES:
            qmodel = edgeq.quantize(model, name, calib=data.x_train[:512])
            with torch.no_grad():
                ref = qmodel(data.x_test)
            acc = accuracy(ref, data.y_test)
            path = export_integer(qmodel, data.x_test[:1], Path(tmp) / f"{name}.onnx")
            ort_mis = int((OrtExecutor(path).run([x])[0] != ref.numpy()).sum())
            tvm_mis = ""
            if not args.no_tvm:
                artifact = edgeq.compile(path, target="cpu", out_dir=tmp)
                tvm_mis = int((TvmExecutor(artifact.path).run([x])[0] != ref.numpy()).sum())
            rows.append([name, f"{100 * acc:.2f}", f"{100 * (acc - float_acc):+.2f}", ort_mis, tvm_mis, path.stat().st_size])
    print(format_table(headers, rows, title=f"digits CNN, {len(x)} test images"))
    notes = (
        f"{len(x)} test images x 10 logits compared element by element with the PyTorch integer "
        "reference (0 = bit-exact). Integer-only ONNX from `edgeq.passes.integerize.export_integer` "
        "(QDQ export + `integerize`); activations uint8 per tensor, weights symmetric per channel."
    )
    append_results("Integer-only digits CNN (HAWQ-V3 dyadic): accuracy and bit-exactness", markdown_table(headers, rows), notes)


if __name__ == "__main__":
    main()
