"""The built-in digits CNN: shipped weights, its accuracy, and bit-for-bit regeneration."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from edgeq.models.digits_cnn import WEIGHTS, DigitsCNN, accuracy
from edgeq.models.train_digits_cnn import host_reproduces_shipped_weights
from edgeq.models.train_digits_cnn import main as train_main


def test_weights_ship_small():
    assert WEIGHTS.exists()
    assert WEIGHTS.stat().st_size < 1 << 20


def test_architecture_has_the_operators_the_pipeline_carries():
    kinds = {type(m) for m in DigitsCNN().modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d, nn.Linear} <= kinds


def test_split_is_fixed(digits):
    assert len(digits.x_train) == 1347 and len(digits.x_test) == 450
    # the first test labels of the stratified seed-0 split
    assert digits.y_test[:8].tolist() == [2, 0, 4, 9, 4, 1, 2, 4]
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0


def test_float_accuracy(digits, digits_model):
    with torch.no_grad():
        assert accuracy(digits_model(digits.x_test), digits.y_test) >= 0.98


@pytest.mark.skipif(not host_reproduces_shipped_weights(),
                    reason="the shipped weights were trained with AVX2 kernels; this host has no AVX2")
def test_training_regenerates_the_shipped_weights_bit_for_bit(tmp_path):
    """On any x86-64 host with AVX2 (AVX-512 ones included: the training pins its kernels)."""
    out = tmp_path / "w.safetensors"
    train_main(["--out", str(out)])
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(WEIGHTS)
