"""Bad input gets one clear line naming the thing at fault, and no half-written output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import edgeq
from edgeq.errors import ModelFileError, QuantizationError, RecipeError, TargetError


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_recipe_names_it(digits_model):
    with pytest.raises(RecipeError, match="'w9a9'"):
        edgeq.quantize(digits_model, "w9a9")


def test_w8a8_without_calibration(digits_model):
    with pytest.raises(QuantizationError, match="calib"):
        edgeq.quantize(digits_model, "w8a8")


def test_model_without_quantizable_layers():
    with pytest.raises(QuantizationError, match="no quantizable layers"):
        edgeq.quantize(nn.Sequential(nn.ReLU()), "w8a8", calib=torch.zeros(1, 3))


def test_missing_file_cli(tmp_path):
    r = run_cli("compile", str(tmp_path / "nope.onnx"), "--target", "cpu", "-o", str(tmp_path))
    assert r.returncode == ModelFileError.exit_code
    assert r.stderr.strip().count("\n") == 0
    assert "nope.onnx: no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_onnx_cli_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 definitely not a protobuf \xff\xff")
    out = tmp_path / "out"
    r = run_cli("compile", str(bad), "--target", "cpu", "-o", str(out))
    assert r.returncode == ModelFileError.exit_code
    assert "bad.onnx" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unknown_target(tmp_path, w8a8_pipeline):
    _, onnx_path, _ = w8a8_pipeline
    with pytest.raises(TargetError, match="unknown target 'riscv128'"):
        edgeq.compile(onnx_path, target="riscv128", out_dir=tmp_path)


def test_missing_artifact():
    from edgeq.runtime import TvmExecutor

    with pytest.raises(ModelFileError, match="no such artifact"):
        TvmExecutor("/nonexistent/model.so")


def test_failed_write_leaves_no_file(tmp_path):
    from edgeq._io import atomic_path

    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
