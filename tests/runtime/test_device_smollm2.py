"""SmolLM2-135M W4, compiled for arm64 with a symbolic sequence length, runs on the emulated
device through ``edgeq validate`` and matches onnxruntime (MatMulNBits at accuracy level 0).

qemu-user is slow, so the sequence is short (4 tokens): the run, with the 78 MB upload, took
87 s. Both sides compute in float32 from the same 4-bit weights: measured max error 3.2e-6 of
the logits' scale; the bound is 5e-5 with every top-1 token equal. Skips without a running
device, fails instead under EDGEQ_REQUIRE_DEVICE=arm64 (CI).
"""

from __future__ import annotations

import json

import pytest

from _smollm2_w4 import smollm2_w4_artifact, smollm2_w4_onnx
from edgeq.cli import main
from _devices import running_arm64_device, uses_arm64_device

pytestmark = [pytest.mark.device, pytest.mark.slow, uses_arm64_device]

SEQ = 4
VOCAB = 49152


def test_smollm2_w4_on_device_matches_onnxruntime(smollm2, tmp_path_factory, capsys):
    device = running_arm64_device()  # before the export and compile: a missing device fails fast
    onnx_path = smollm2_w4_onnx(smollm2, tmp_path_factory)
    artifact = smollm2_w4_artifact("arm64", smollm2, tmp_path_factory)
    code = main(["validate", str(onnx_path), str(artifact.path), "--device", device.url, "--inputs", "random",
                 "--dim", "batch=1", "--dim", f"seq={SEQ}", "--max-rel", "5e-5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    (result,) = report["results"]
    (numerics,) = result["outputs"]
    assert numerics["executor"] == "tvm-rpc:arm64"
    assert numerics["elements"] == SEQ * VOCAB
    assert numerics["max_rel"] <= 5e-5 and numerics["top1_agreement"] == 1.0, numerics
