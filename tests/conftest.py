"""Shared fixtures: the built-in model, its data, and the W8A8 pipeline artifacts (built once)."""

from __future__ import annotations

import pytest

import edgeq
from edgeq.models import digits_data, load_digits_cnn


@pytest.fixture(scope="session")
def digits():
    return digits_data()


@pytest.fixture(scope="session")
def digits_model():
    return load_digits_cnn()


@pytest.fixture(scope="session")
def w8a8_pipeline(tmp_path_factory, digits, digits_model):
    """(quantized model, ONNX path, compiled host-CPU artifact) for the digits CNN at W8A8."""
    out = tmp_path_factory.mktemp("w8a8")
    qmodel = edgeq.quantize(digits_model, "w8a8", calib=digits.x_train[:512])
    onnx_path = edgeq.export(qmodel, digits.x_test[:1], out / "digits.onnx")
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=out)
    return qmodel, onnx_path, artifact


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M in float32; loaded once (~20 s)."""
    from edgeq.models.smollm2 import load_smollm2

    return load_smollm2()
