"""SmolLM2-135M smoke test: GPTQ and Hadamard+RTN on the first two decoder blocks keep the
logits close to float, and the saved model loads back with identical outputs."""

from __future__ import annotations

import pytest
import torch

import edgeq
from edgeq.models.wikitext import calibration_windows, wikitext_tokens
from edgeq.quant.serialize import load_quantized, save_quantized
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.quant.weight_only_recipes import GPTQRecipe, RTNRecipe

FIRST_TWO_BLOCKS = ("lm_head", "model.layers.[2-9].*", "model.layers.[1-9][0-9].*")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_tokens(smollm2):
    return wikitext_tokens(smollm2[1])


def _logit_error(model, qmodel, ids):
    with torch.no_grad():
        ref, out = model(ids).logits, qmodel(ids).logits
    return ((out - ref).norm() / ref.norm()).item(), (out.argmax(-1) == ref.argmax(-1)).float().mean().item()


def test_gptq_on_two_blocks_stays_close_and_round_trips(smollm2, smollm2_tokens, tmp_path):
    model, _ = smollm2
    ids = smollm2_tokens[:96].unsqueeze(0)
    calib = calibration_windows(smollm2_tokens, 4, seq_len=128)
    recipe = GPTQRecipe(skip=FIRST_TWO_BLOCKS, bits=4, group_size=128, group_fallback=True)
    qmodel = edgeq.quantize(model, recipe, calib=[calib])
    quantized = [n for n, m in qmodel.named_modules() if isinstance(m, WeightOnlyLinear)]
    assert len(quantized) == 14 and all(n.startswith(("model.layers.0.", "model.layers.1.")) for n in quantized)
    rel, top1 = _logit_error(model, qmodel, ids)
    # 4-bit weights in 2 of 30 blocks: logits within 15% (relative L2; measured 0.099), top-1
    # agrees on >= 88% of tokens (measured 0.93)
    assert rel < 0.15 and top1 >= 0.88, (rel, top1)

    path = save_quantized(qmodel, tmp_path / "smollm2.safetensors", source="smollm2")
    loaded = load_quantized(path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, qmodel(ids).logits)


def test_hadamard_rtn_on_two_blocks_stays_close(smollm2, smollm2_tokens):
    model, _ = smollm2
    ids = smollm2_tokens[:96].unsqueeze(0)
    qmodel = edgeq.quantize(model, RTNRecipe(skip=FIRST_TWO_BLOCKS, bits=4, group_size=64, hadamard=True))
    rel, top1 = _logit_error(model, qmodel, ids)
    assert rel < 0.15 and top1 >= 0.88, (rel, top1)  # same bounds as GPTQ at 4 bits
