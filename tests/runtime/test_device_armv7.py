"""armv7 artifacts on the emulated armv7 device: qemu-arm runs edgeq's kernel harness against an
armhf Debian root; the harness dlopens the artifact's library and runs each kernel call the
host's TVM VM sends it (PyPI has no armv7 TVM runtime; docs/DEVICES.md).

Bars: the integer-only digits CNN bit for bit on the whole test set (every kernel too); a tiny
W4 LLaMA's integer kernels bit for bit, its float kernels within 1e-5 of the output's scale of
the host's kernels (NEON and AVX builds sum in other orders), its logits against PyTorch by the
float floor rule at 1e-4. The slow test runs SmolLM2-135M W4 through ``edgeq validate``
against onnxruntime (MatMulNBits, float activations) at 5e-5, as the arm64 device does.

Skips without qemu-arm, the armhf cross compiler and the device's root (``edgeq device start
armv7``); fails instead where EDGEQ_REQUIRE_DEVICE lists armv7.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeq
from _devices import (
    assert_bit_exact_report,
    assert_kernels_match,
    integer_digits_cnn,
    require_harness_device,
    run_checked,
    tiny_llama_w4,
)
from edgeq.cli import main
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.kernel_harness import HarnessExecutor

pytestmark = pytest.mark.device

DEVICE = "armv7"
FLOAT_KERNEL_BAR = 1e-5


@pytest.fixture(scope="module", autouse=True)
def armv7_device():
    require_harness_device(DEVICE)


@pytest.fixture(scope="module")
def integer_cnn(digits, digits_model, tmp_path_factory):
    return integer_digits_cnn(digits, digits_model, tmp_path_factory.mktemp("armv7_int"), ("cpu", "armv7"))


def test_artifact_is_arm(integer_cnn):
    header = integer_cnn[3].path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 40  # EM_ARM


def test_integer_cnn_on_armv7_is_bit_exact(integer_cnn, digits, capsys):
    _, path, _, armv7 = integer_cnn
    code = main(["validate", str(path), str(armv7.path), "--device", DEVICE, "--reference", "digits:w8a8-dyadic",
                 "--inputs", "digits", "--exact", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert_bit_exact_report(report, {"onnxruntime", "harness:armv7"}, len(digits.x_test) * 10)


def test_integer_cnn_kernels_match_the_host(integer_cnn, digits):
    _, _, host, armv7 = integer_cnn
    _, ex = run_checked(armv7, DEVICE, host, [digits.x_test[:64].numpy()])
    assert ex.checks and all(c.mismatches == 0 for c in ex.checks), [c for c in ex.checks if c.mismatches]


def test_profile_times_the_armv7_artifact(integer_cnn, tmp_path, capsys):
    _, path, _, armv7 = integer_cnn
    code = main(["profile", str(path), str(armv7.path), "--device", DEVICE, "--warmup", "1", "--repeat", "3",
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert "harness:armv7" in json.dumps(report), report


@pytest.mark.parametrize("seq", [1, 8], ids=["gemv", "gemm"])
def test_lowbit_llama_on_armv7(tmp_path_factory, seq):
    out = tmp_path_factory.mktemp(f"armv7_llama{seq}")
    qmodel = tiny_llama_w4()
    with torch.no_grad():
        path = edgeq.export(qmodel, torch.randint(0, 256, (1, 8)), out / "tiny_llama.onnx")
    host, armv7 = edgeq.compile(path, target="cpu", out_dir=out), edgeq.compile(path, target="armv7", out_dir=out)
    ids = np.random.default_rng(seq).integers(0, 256, (1, seq)).astype(np.int64)
    (logits,), ex = run_checked(armv7, DEVICE, host, [ids])
    assert any("packed_linear_w4" in c.name for c in ex.checks)
    assert_kernels_match(ex.checks, FLOAT_KERNEL_BAR)
    t = torch.from_numpy(ids)
    check = judge(logits, causal_lm_logits(qmodel, t), float64_logits(qmodel, t))
    assert check.ok, check


@pytest.mark.slow
def test_smollm2_w4_on_armv7_matches_onnxruntime(smollm2, tmp_path_factory, capsys):
    from _smollm2_w4 import smollm2_w4_artifact, smollm2_w4_onnx

    onnx_path = smollm2_w4_onnx(smollm2, tmp_path_factory)
    artifact = smollm2_w4_artifact("armv7", smollm2, tmp_path_factory)
    code = main(["validate", str(onnx_path), str(artifact.path), "--device", DEVICE, "--inputs", "random",
                 "--dim", "batch=1", "--dim", "seq=4", "--max-rel", "5e-5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    (result,) = report["results"]
    (numerics,) = result["outputs"]
    assert numerics["executor"] == "harness:armv7" and numerics["elements"] == 4 * 49152
    assert numerics["max_rel"] <= 5e-5 and numerics["top1_agreement"] == 1.0, numerics


def test_frozen_harness_times_out(integer_cnn):
    import os
    import signal
    import time

    from edgeq.runtime.kernel_harness import HarnessError

    _, _, _, armv7 = integer_cnn
    ex = HarnessExecutor(armv7.path, DEVICE, call_timeout_s=5)
    os.kill(ex.harness.proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(HarnessError, match="did not finish within 5 s"):
        ex.run([np.zeros((1, 1, 8, 8), np.float32)])
    assert time.monotonic() - start < 30
    ex.close()
