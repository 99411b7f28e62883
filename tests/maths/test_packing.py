"""Packing round-trips exactly for every bit width, and the byte layout is the documented one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.errors import QuantizationError
from edgeq.maths.packing import pack, packed_length, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), rows=st.integers(1, 5), units=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_roundtrip(bits, rows, units, seed):
    per_unit = {2: 4, 3: 8, 4: 2, 8: 1}[bits]
    k = units * per_unit
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (rows, k), generator=g, dtype=torch.int64)
    packed = pack(q, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, packed_length(k, bits))
    assert torch.equal(unpack(packed, bits, k).long(), q)


def test_bits_per_weight():
    assert packed_length(128, 4) * 8 / 128 == 4
    assert packed_length(128, 3) * 8 / 128 == 3
    assert packed_length(128, 2) * 8 / 128 == 2


def test_layout():
    assert pack(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    # 3-bit: values 0..7 -> word sum(j << 3j) = 0xFAC688 -> bytes little-endian
    assert pack(torch.arange(8), 3).tolist() == [0x88, 0xC6, 0xFA]


def test_bad_lengths():
    with pytest.raises(QuantizationError, match="multiple of 8"):
        pack(torch.zeros(12, dtype=torch.int64), 3)
    with pytest.raises(QuantizationError, match="5-bit"):
        pack(torch.zeros(8, dtype=torch.int64), 5)
