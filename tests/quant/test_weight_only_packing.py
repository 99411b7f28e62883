"""WeightOnlyLinear/Conv2d hold packed integers that round-trip exactly for every bit width and
group size, and compute with the documented formula."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.maths.groups import quantize_groups
from edgeq.quant.weight_only import WeightOnlyConv2d, WeightOnlyLinear, from_float_layer


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), group_size=st.sampled_from([8, 32, 64, 128, None]),
       groups=st.integers(1, 3), out_features=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_packing_round_trips_through_the_layer(bits, group_size, groups, out_features, seed):
    g = torch.Generator().manual_seed(seed)
    in_features = (group_size or 64) * groups
    group_size = group_size or in_features  # None: per channel
    q = torch.randint(0, 2 ** bits, (out_features, in_features), generator=g)
    scales = (torch.rand(out_features, in_features // group_size, generator=g) + 0.01).half()
    zeros = torch.randint(0, 2 ** bits, (out_features, in_features // group_size), generator=g).to(torch.uint8)
    layer = WeightOnlyLinear.from_integers(q, scales, zeros, bits)
    assert torch.equal(layer.integer_weight().long(), q)  # exact
    expect = (q.float() - zeros.float().repeat_interleave(group_size, 1)) * scales.float().repeat_interleave(group_size, 1)
    assert torch.equal(layer.dequantized_weight(), expect)
    # bytes held: bits per weight + a float16 scale and a uint8 zero per group
    assert layer.bits_per_weight == pytest.approx(bits + 24 / group_size)


def test_conv2d_variant_matches_float_conv_on_its_dequantized_weight():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=True)
    gq = quantize_groups(conv.weight.reshape(8, -1), bits=4, group_size=48)
    layer = from_float_layer(conv, gq.q, gq.scales, gq.zeros, 4)
    assert isinstance(layer, WeightOnlyConv2d) and layer.bits_per_weight == pytest.approx(4.5)
    x = torch.randn(2, 16, 9, 9)
    ref = torch.nn.functional.conv2d(x, gq.dequantize().reshape(conv.weight.shape), conv.bias, 2, 1)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=0)
    # the quantized conv stays close to the float one (4-bit: < 10% relative error)
    assert (layer(x) - conv(x)).norm() / conv(x).norm() < 0.1
