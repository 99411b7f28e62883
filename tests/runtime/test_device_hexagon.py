"""edgeq's Hexagon kernels executed under qemu-hexagon (the ``hexagon-sim`` device): the kernel
harness linked with the artifact's kernel object, the host's TVM VM driving the artifact's own
call sequence, every kernel call also run by the host build's kernel of the same name.

Kernel kinds covered: the integer-only digits CNN (w8a8-dyadic: integer conv, integer matmul,
dyadic requantize, quantize/dequantize) and a tiny LLaMA at W4 (packed low-bit GEMV at one row,
GEMM at eight, RMSNorm, softmax, SiLU, rotary sin/cos, gathers and reshapes).

Bars: integer tensors bit for bit (every kernel's and the model's); float kernels against the
host's kernel within 1e-6 of the output's scale (measured: 0 everywhere except sin, where the
harness's sinf differs from glibc's by one ulp on 2 of 256 values, 1.5e-8); the LLaMA's logits
against PyTorch by the float floor rule (runtime/float_floor.py) at 1e-4.

QEMU 7.2 executes Hexagon v67 scalar code and HVX integer instructions, but cannot decode v68's
HVX float instructions (qf32 vmpy/vadd): float models are checked on ``hexagon-v68-hvx-int``
(HVX for integers, scalar float), and a hexagon-v68 float artifact fails with that named.

Skips without qemu-hexagon, clang-14 and lld-14 (``edgeq device start hexagon-sim``); fails
instead where EDGEQ_REQUIRE_DEVICE lists hexagon-sim. CI time: ~2 min (compiles ~90 s).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeq
from _devices import assert_kernels_match, integer_digits_cnn, require_harness_device, run_checked, tiny_llama_w4
from edgeq.cli import main
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.kernel_harness import HarnessError, HarnessExecutor

pytestmark = pytest.mark.device

DEVICE = "hexagon-sim"
FLOAT_KERNEL_BAR = 1e-6


@pytest.fixture(scope="module", autouse=True)
def hexagon_sim():
    require_harness_device(DEVICE)


@pytest.fixture(scope="module")
def integer_cnn(digits, digits_model, tmp_path_factory):
    """(quantized model, integer-only ONNX, host artifact, hexagon-v68 artifact, hexagon-v73 artifact)."""
    return integer_digits_cnn(digits, digits_model, tmp_path_factory.mktemp("hexagon_int"),
                              ("cpu", "hexagon-v68", "hexagon-v73"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """(W4 model, ONNX, host artifact, hexagon-v68-hvx-int artifact) of a 1-layer LLaMA."""
    out = tmp_path_factory.mktemp("hexagon_llama")
    qmodel = tiny_llama_w4()
    with torch.no_grad():
        path = edgeq.export(qmodel, torch.randint(0, 256, (1, 8)), out / "tiny_llama.onnx")
    return qmodel, path, edgeq.compile(path, target="cpu", out_dir=out), edgeq.compile(path, target="hexagon-v68-hvx-int", out_dir=out)


def test_integer_cnn_every_kernel_bit_exact_on_hexagon(digits, integer_cnn):
    qmodel, _, host, v68, _ = integer_cnn
    x = digits.x_test[:128].numpy()
    (out,), ex = run_checked(v68, DEVICE, host, [x])
    assert np.array_equal(out, qmodel(torch.from_numpy(x)).numpy())
    kinds = {kind for kind in ("conv_integer", "matmul", "dyadic_requantize", "quantize")
             if any(kind in c.name for c in ex.checks)}
    assert kinds == {"conv_integer", "matmul", "dyadic_requantize", "quantize"}, [c.name for c in ex.checks]
    assert all(c.mismatches == 0 for c in ex.checks), [c for c in ex.checks if c.mismatches]
    assert len(ex.calls) == len(ex.checks) and all(c.seconds > 0 for c in ex.calls)


def test_validate_cli_runs_the_integer_cnn_on_hexagon_v73(integer_cnn, digits, capsys):
    _, path, _, _, v73 = integer_cnn
    code = main(["validate", str(path), str(v73.path), "--device", DEVICE, "--reference", "digits:w8a8-dyadic",
                 "--inputs", "digits", "--samples", "200", "--exact", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    on_hexagon = next(r for r in report["results"] if r["numerics"]["executor"] == "harness:hexagon-v73")
    assert on_hexagon["numerics"]["mismatches"] == 0 and on_hexagon["numerics"]["elements"] == 200 * 10


def test_validate_table_names_the_hexagon_executor(integer_cnn, capsys):
    _, path, _, v68, _ = integer_cnn
    code = main(["validate", str(path), str(v68.path), "--device", DEVICE, "--inputs", "digits", "--samples", "16", "--exact"])
    table = capsys.readouterr().out
    assert code == 0 and "harness:hexagon-v68" in table and "DIVERGES" not in table, table


@pytest.mark.parametrize("seq", [1, 8], ids=["gemv", "gemm"])
def test_lowbit_llama_kernels_match_the_host(tiny_llama, seq):
    qmodel, _, host, hexagon = tiny_llama
    ids = np.random.default_rng(seq).integers(0, 256, (1, seq)).astype(np.int64)
    (logits,), ex = run_checked(hexagon, DEVICE, host, [ids])
    names = " ".join(c.name for c in ex.checks)
    # the rotary sin/cos get kernels of their own at 8 tokens; at one token TVM may fuse them into
    # other kernels (their names then vary between builds), so only the GEMM run requires them
    kinds = ("packed_linear_w4", "softmax", "sigmoid", "sqrt", "take") + (("sin", "cos") if seq > 1 else ())
    for kind in kinds:
        assert kind in names, (kind, names)
    assert_kernels_match(ex.checks, FLOAT_KERNEL_BAR)
    t = torch.from_numpy(ids)
    check = judge(logits, causal_lm_logits(qmodel, t), float64_logits(qmodel, t))
    assert check.ok, check


def test_hvx_float_artifact_fails_naming_the_qemu_gap(tiny_llama, tmp_path):
    _, path, _, _ = tiny_llama
    artifact = edgeq.compile(path, target="hexagon-v68", out_dir=tmp_path)
    ex = HarnessExecutor(artifact.path, DEVICE)
    try:
        with pytest.raises(HarnessError, match="HVX float"):
            ex.run([np.zeros((1, 4), np.int64)])
    finally:
        ex.close()


def test_artifact_for_another_target_is_refused(integer_cnn):
    _, _, host, _, _ = integer_cnn
    with pytest.raises(HarnessError, match="runs hexagon-v68"):
        HarnessExecutor(host.path, DEVICE)


@pytest.mark.slow
def test_smollm2_first_block_on_hexagon(smollm2, tmp_path):
    """SmolLM2-135M cut to its first decoder block (real weights, W4 g64, 4-bit tied embedding),
    every kernel under qemu-hexagon: integer tensors bit for bit and float kernels within 1e-6
    of the host's; the logits match onnxruntime (MatMulNBits, float activations) at 5e-5 with
    every top-1 token equal."""
    from _smollm2_w4 import smollm2_w4_first_layers
    from edgeq.runtime.executors import OrtExecutor
    from edgeq.runtime.validate import compare

    qmodel, ids = smollm2_w4_first_layers(smollm2, 1)
    with torch.no_grad():
        path = edgeq.export(qmodel, ids, tmp_path / "smollm2_block0.onnx")
    host = edgeq.compile(path, target="cpu", out_dir=tmp_path)
    hexagon = edgeq.compile(path, target="hexagon-v68-hvx-int", out_dir=tmp_path)
    x = ids[:, :4].numpy()
    (logits,), ex = run_checked(hexagon, DEVICE, host, [x])
    assert_kernels_match(ex.checks, FLOAT_KERNEL_BAR)
    numerics = compare("harness:hexagon-v68-hvx-int", OrtExecutor(path).run([x])[0], logits)
    assert numerics.max_rel <= 5e-5 and numerics.top1_agreement == 1.0, numerics
