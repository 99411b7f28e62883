"""Which emulated devices a test run must have, and the skip-or-fail rule for the others.

EDGEQ_REQUIRE_DEVICE names the devices CI prepares (comma-separated: ``arm64,armv7,hexagon-sim``);
a test needing one of them fails instead of skipping when it is missing."""

from __future__ import annotations

import os

import pytest

# Tests that talk to the emulated arm64 device run in one pytest-xdist group (tests/conftest.py):
# its RPC server serves one session at a time, and one test stops it for a while.
ARM64_DEVICE = "arm64-device"
uses_arm64_device = pytest.mark.xdist_group(ARM64_DEVICE)


def required_devices() -> set[str]:
    return {d.strip() for d in os.environ.get("EDGEQ_REQUIRE_DEVICE", "").split(",") if d.strip()}


def skip_or_fail(device: str, message: str) -> None:
    if device in required_devices():
        pytest.fail(f"{message} but EDGEQ_REQUIRE_DEVICE lists {device}")
    pytest.skip(message)


def running_arm64_device():
    """The emulated arm64 device's state, or skip (fail where CI requires it)."""
    from edgeq.runtime import device as dev

    state = dev.device_status("arm64")
    if state is None:
        skip_or_fail("arm64", "the arm64 device is not running (edgeq device start arm64)")
    return state


def require_arm64_cross() -> None:
    """Skip without the aarch64 cross compiler; fail in CI, which installs it (EDGEQ_REQUIRE_CROSS)."""
    import shutil

    from edgeq.targets import get_target

    if shutil.which(get_target("arm64").cross_compiler) is None:
        message = "aarch64 g++ not installed (Debian package g++-aarch64-linux-gnu)"
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):
            pytest.fail(message)
        pytest.skip(message)


def assert_aarch64_library(path) -> None:
    header = open(path, "rb").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def require_harness_device(name: str) -> None:
    """A harness device (armv7, hexagon-sim) is usable when its tools and root are here."""
    from edgeq.runtime.device import device_dir, device_spec

    spec = device_spec(name)
    missing = spec.missing_packages()
    if missing:
        skip_or_fail(name, f"the {name} device needs the Debian packages {' '.join(missing)} (edgeq device start {name})")
    if spec.root_marker and not (device_dir(name) / "rootfs" / spec.root_marker).exists():
        skip_or_fail(name, f"the {name} device's Debian root is not built (edgeq device start {name})")


def tiny_llama_w4():
    """A 1-layer LLaMA (random init, seed 0) with W4 g64 linears and a 4-bit tied embedding:
    every kernel kind of an edgeq LLM artifact at small shapes."""
    import torch

    import edgeq
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeq.quant.embedding import quantize_embeddings

    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    qmodel = edgeq.quantize(LlamaForCausalLM(cfg).eval(), "w4g64-rtn")
    quantize_embeddings(qmodel, 4, 64)
    return qmodel


def integer_digits_cnn(digits, digits_model, out, targets=()) -> tuple:
    """(the w8a8-dyadic digits CNN, its integer-only ONNX file in ``out``, an artifact compiled
    from it for each of ``targets``): the integer model every device runs bit for bit."""
    import edgeq
    from edgeq.passes.integerize import export_integer

    qmodel = edgeq.quantize(digits_model, "w8a8-dyadic", calib=digits.x_train[:512])
    path = export_integer(qmodel, digits.x_test[:1], out / "digits_int.onnx")
    return (qmodel, path, *(edgeq.compile(path, target=t, out_dir=out) for t in targets))


def run_checked(artifact, device: str, host, inputs):
    """Run ``artifact`` on the harness ``device``, every kernel call also run by the ``host``
    build's kernel of the same name: (outputs, the executor with its ``checks`` and ``calls``)."""
    from edgeq.runtime.kernel_harness import HarnessExecutor

    ex = HarnessExecutor(artifact.path, device, check_against=host.path)
    try:
        return ex.run(inputs), ex
    finally:
        ex.close()


def assert_kernels_match(checks, float_bar: float) -> None:
    """Integer (and bool) kernel outputs equal the host's bit for bit; float ones within
    ``float_bar`` of the output's scale."""
    import numpy as np

    for c in checks:
        if np.issubdtype(np.dtype(c.dtype), np.integer) or c.dtype == "bool":
            assert c.mismatches == 0, c
        else:
            assert c.max_rel <= float_bar, c


def assert_bit_exact_report(report: dict, executors: set[str], elements: int) -> None:
    """An ``edgeq validate --json`` report in which each of ``executors`` (and nothing else)
    gave the reference's ``elements`` output values exactly."""
    by_executor = {r["numerics"]["executor"]: r["numerics"] for r in report["results"]}
    assert set(by_executor) == executors
    for numerics in by_executor.values():
        assert numerics["mismatches"] == 0 and numerics["elements"] == elements, numerics
