"""The built-in demo model: a small CNN trained on scikit-learn's 8x8 digits.

Conv-BN-ReLU blocks, one residual add, average pooling and a linear head: every operator kind
the pipeline has to carry (conv, batch norm, add, pooling, matmul) in a model that trains in
seconds and has a real test accuracy. The weights ship as ``digits_cnn.safetensors`` and are
regenerated bit for bit by ``python -m edgeq.models.train_digits_cnn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_cnn.safetensors")
SPLIT_SEED = 0
TEST_FRACTION = 0.25


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class DigitsCNN(nn.Module):
    """1x8x8 image -> 10 logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = ConvBNReLU(1, width)
        self.block_a = ConvBNReLU(width, width)
        self.block_b = ConvBNReLU(width, width, relu=False)
        self.relu = nn.ReLU()
        self.down = ConvBNReLU(width, 2 * width, stride=2)
        self.pool = nn.AvgPool2d(4)  # the 4x4 map after the stride-2 conv
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.block_b(self.block_a(x)))
        x = self.down(x)
        x = self.pool(x).flatten(1)
        return self.head(x)


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_data() -> DigitsSplit:
    """The fixed train/test split of the 1,797 digits (stratified, seed 0, 25% test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    return DigitsSplit(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te), torch.from_numpy(y_te).long(),
    )


def load_digits_cnn(path: str | Path = WEIGHTS) -> DigitsCNN:
    """The trained model in eval mode."""
    from safetensors.torch import load_file

    model = DigitsCNN()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
