"""GPTQ against RTN on real SmolLM2-135M layers with real calibration activations, and the
group-size error an explicit recipe (no ``group_fallback``) gives on SmolLM2's 576-wide inputs."""

from __future__ import annotations

import pytest
import torch

import edgeq
from edgeq.errors import QuantizationError
from edgeq.maths.groups import quantize_groups
from edgeq.models.wikitext import calibration_windows, wikitext_tokens, windows_of
from edgeq.quant.gptq import HessianAccumulator, gptq_quantize_weight
from edgeq.quant.weight_only_recipes import GPTQRecipe, RTNRecipe

pytestmark = pytest.mark.slow

# GPTQ's held-out output error as a fraction of RTN's, per layer, at W4 g64 and W3 g64.
# Measured (16 x 512 calibration tokens): q_proj 0.36/0.37, o_proj 0.48/0.47, down_proj 0.89/0.88.
# down_proj is the hard case: its 1536 inputs carry a few massive-activation channels, so its
# Hessian needs many tokens to generalize (block 5's down_proj at W4: 1.2x RTN's held-out error
# with 4 x 512 calibration tokens, 0.76x with 32 x 512, while 0.38x on the calibration tokens).
BOUND = {"model.layers.1.self_attn.q_proj": 0.5, "model.layers.1.self_attn.o_proj": 0.6,
         "model.layers.1.mlp.down_proj": 0.95}
LAYERS = tuple(BOUND)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def layer_inputs(smollm2):
    """Per layer: (Hessian from 16 calibration windows of 512 tokens, held-out inputs from 4
    other windows). Only blocks 0-1 run: the forward stops at block 2."""
    model, tokenizer = smollm2
    tokens = wikitext_tokens(tokenizer)
    calib = calibration_windows(tokens, 16, 512, skip=40, seed=0)
    held = windows_of(tokens, 512)[:4]
    acc = {n: HessianAccumulator(model.get_submodule(n)) for n in LAYERS}
    held_x = {n: [] for n in LAYERS}
    sink = {"calib": True}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            acc[name].add(x) if sink["calib"] else held_x[name].append(x)
        return record

    def stop(_module, _args):
        raise _Stop

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in LAYERS]
    handles.append(model.model.layers[2].register_forward_pre_hook(stop))
    try:
        with torch.no_grad():
            for part, batches in ((True, calib.split(4)), (False, held.split(4))):
                sink["calib"] = part
                for ids in batches:
                    try:
                        model(ids, use_cache=False)
                    except _Stop:
                        pass
    finally:
        for h in handles:
            h.remove()
    return {n: (acc[n].h, torch.cat(held_x[n])) for n in LAYERS}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 64)])
def test_gptq_output_error_below_rtn_on_held_out_tokens(smollm2, layer_inputs, name, bits, group_size):
    """Relative output error ‖X(W - Ŵ)ᵀ‖ / ‖XWᵀ‖ on 4 windows the Hessian never saw."""
    weight = smollm2[0].get_submodule(name).weight.detach()
    hessian, x = layer_inputs[name]
    ref = x @ weight.T

    def err(wq):
        return ((x @ wq.T - ref).norm() / ref.norm()).item()

    rtn = err(quantize_groups(weight, bits, group_size).dequantize())
    gptq = err(gptq_quantize_weight(weight, hessian, bits, group_size).dequantize())
    assert gptq < BOUND[name] * rtn, (rtn, gptq)


@pytest.mark.parametrize("recipe", [RTNRecipe(skip=("lm_head",), bits=4, group_size=128),
                                    GPTQRecipe(skip=("lm_head",), bits=4, group_size=128)])
def test_group_128_without_fallback_names_the_576_wide_layer(smollm2, recipe):
    with pytest.raises(QuantizationError,
                       match=r"^model\.layers\.0\.self_attn\.q_proj: group size 128 does not divide its 576 input features$"):
        edgeq.quantize(smollm2[0], recipe, calib=[torch.zeros(1, 8, dtype=torch.long)])
