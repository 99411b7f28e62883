"""A conv stem with 27 inputs (3 channels × 3×3) cannot hold 4-bit groups: a W4 preset refuses it
before any work with a QuantizationError that names the layer and the reason (per channel: also
the way out, ``skip``), and with the stem skipped the rest quantizes (issue #17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.weight_only import WeightOnlyConv2d
from edgeq.quant.weight_only_recipes import RTNRecipe


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),  # "0.0": 27 inputs
        nn.Conv2d(16, 32, 3, padding=1),  # "1": 144 inputs
    ).eval()


@pytest.mark.parametrize("preset, reason", [
    ("w4-rtn", r"4-bit values in groups of 27 do not fill whole bytes"),  # was unnamed, after work began
    ("w4g32-rtn", r"group size 32 does not divide its 27 input features"),
    ("w4g64-rtn", r"group size 64 does not divide its 27 input features"),  # Hadamard presets refuse a CNN earlier (no decoder facts)
])
def test_w4_preset_refuses_the_27_input_stem_by_name(preset, reason, monkeypatch):
    import edgeq.quant.weight_only_recipes as wo

    def no_work(*args, **kwargs):  # the refusal comes before any layer is quantized
        raise AssertionError("a layer was quantized before the refusal")

    monkeypatch.setattr(wo, "quantize_groups", no_work)
    with pytest.raises(QuantizationError, match=rf"^0\.0: {reason}") as exc:
        edgeq.quantize(_cnn(), preset)
    if preset == "w4-rtn":
        assert "skip=['0.0']" in str(exc.value)


def test_w4_with_the_stem_skipped_quantizes_the_rest():
    model = _cnn()
    qmodel = edgeq.quantize(model, RTNRecipe(bits=4, group_size=32, group_fallback=True, skip=("0.0",)))
    assert isinstance(qmodel[0][0], nn.Conv2d) and isinstance(qmodel[1], WeightOnlyConv2d)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), qmodel(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.2  # 4-bit weights, not a different model
