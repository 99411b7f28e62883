"""The CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_json(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "edgeq.cli", "demo", "--out", str(out), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["quant_top1"] >= report["float_top1"] - 0.01
    assert report["ort_top1_agreement"] >= 0.995 and report["tvm_top1_agreement"] >= 0.995
    assert (out / "digits_cnn.w8a8.onnx").exists()
    assert (out / "digits_cnn.w8a8.cpu.so").exists()


def test_demo_table(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeq.cli", "demo", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for row in ("float32 top-1", "onnxruntime top-1 agreement", "TVM (cpu) max abs error", "ONNX file size", "TVM compile time"):
        assert row in r.stdout
