"""Tiny random-init MobileNet-style CNNs for tests (16x16 RGB in, 10 class scores out).

``tiny_mobilenet_v2()``: stem conv + ReLU6, inverted residual blocks (1x1 expand + ReLU6, 3x3
depthwise + ReLU6, 1x1 linear projection, residual add where shapes allow), 1x1 head + ReLU6,
global average pool, linear classifier. ``tiny_mobilenet_v3()``: the same skeleton with
Hardswish, squeeze-excite (global pool, 1x1 reduce + ReLU, 1x1 expand + Hardsigmoid, a
per-channel multiply) and a Hardswish classifier. BatchNorm statistics are randomised so that
folding them changes the weights, as in a trained model. Reusable by any test (support matrix
included): ``from _cnn_models import tiny_mobilenet_v2, tiny_mobilenet_v3, cnn_inputs``.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (3, 16, 16)
NUM_CLASSES = 10


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: x * hardsigmoid(W2 relu(W1 mean_hw(x)))."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> [SE] -> 1x1 linear projection, + x when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module], se: bool = False):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), act()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden, max(hidden // 4, 4)))
        layers += _conv_bn(hidden, cout, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class TinyMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 8, 3, 2), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 2, nn.ReLU6),
            InvertedResidual(8, 16, 2, 4, nn.ReLU6),
            InvertedResidual(16, 16, 1, 4, nn.ReLU6),
        )
        self.head = nn.Sequential(*_conv_bn(16, 32, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


class TinyMobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 8, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 1, nn.ReLU, se=True),
            InvertedResidual(8, 16, 2, 3, nn.Hardswish),
            InvertedResidual(16, 16, 1, 3, nn.Hardswish, se=True),
        )
        self.head = nn.Sequential(*_conv_bn(16, 48, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def tiny_mobilenet_v2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_batchnorm(TinyMobileNetV2(), seed)


def tiny_mobilenet_v3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_batchnorm(TinyMobileNetV3(), seed)


def cnn_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """n seeded images, float32 [n, 3, 16, 16], roughly unit variance."""
    return torch.randn((n, *INPUT_SHAPE), generator=torch.Generator().manual_seed(seed))
