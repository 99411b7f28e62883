"""Every LoPRo option of the ``mix*-lopro`` presets (issue #20: W2/W3/W4 at groups of 64, 96 and
192, the last two not powers of two) in one tiny Llama, quantized with a fixed plan: it exports,
compiles for cpu and matches PyTorch by the float floor rule, and cross-compiles for arm64. The
SmolLM2-135M artifacts of the presets themselves are checked by ``benchmarks/preset_artifacts.py``
(too slow for CI)."""

from __future__ import annotations

import math

import torch

import edgeq
from edgeq.quant.allocate import LOPRO_GRIDS, AllocatedRecipe
from edgeq.quant.lopro import LoProLinear
from edgeq.quant.serialize import quantized_layers
from _devices import assert_aarch64_library, require_arm64_cross
from _float_floor_checks import assert_exports_and_matches_pytorch

OPTIONS = sorted({grid for grids in LOPRO_GRIDS.values() for grid in grids})
LINEARS_PER_BLOCK = 7  # q, k, v, o, gate, up, down


def test_every_preset_lopro_option_compiles_and_matches_pytorch(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # 192 and 384 inputs: every option's group (64, 96, 192) and LoPRo's Hadamard blocks of 64 divide them
    cfg = LlamaConfig(vocab_size=256, hidden_size=192, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=math.ceil(len(OPTIONS) / LINEARS_PER_BLOCK), tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    plan = tuple((name, "lopro", *OPTIONS[i % len(OPTIONS)]) for i, name in enumerate(names))
    recipe = AllocatedRecipe(skip=("lm_head",), budget=3.25, grids=(), lopro_grids=tuple(OPTIONS), plan=plan,
                             sensitivity="held-out")
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    qmodel = edgeq.quantize(model, recipe, calib=[calib])
    layers = quantized_layers(qmodel)
    assert {(m.core.bits, m.core.group_size) for m in layers.values() if isinstance(m, LoProLinear)} == set(OPTIONS)

    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    # measured 1.9e-7 (onnxruntime) and 3.7e-7 (TVM cpu) of the logits' scale, floor 3.7e-7
    onnx_path = assert_exports_and_matches_pytorch(qmodel, ids, tmp_path)
    require_arm64_cross()
    assert_aarch64_library(edgeq.compile(onnx_path, target="arm64", out_dir=tmp_path / "arm64").path)
