"""fold_rotations on a QuaRot-rotated SmolLM2 export: the online edgeq.Hadamard before each
down_proj merges into down_proj's float weight (one node less per layer) and the logits stay
within 1e-4 of their scale with the same top-1 token.

To keep the suite fast the model is SmolLM2-135M's real weights cut to its first two decoder
layers; the full 30-layer export was checked the same way by hand (see the passes report).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgeq
from edgeq.passes import run_passes
from edgeq.runtime.ort import ort_session

LAYERS = 2


@pytest.fixture(scope="module")
def rotated_export(smollm2, tmp_path_factory):
    import torch
    from transformers import LlamaForCausalLM

    from edgeq.quant.quarot import rotate_decoder

    full, _ = smollm2
    config = full.config.__class__.from_dict(full.config.to_dict())
    config.num_hidden_layers = LAYERS
    small = LlamaForCausalLM(config).eval()
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < LAYERS}
    small.load_state_dict(state, strict=False)
    small.lm_head.weight = torch.nn.Parameter(full.lm_head.weight.detach().clone())
    rotate_decoder(small)
    path = tmp_path_factory.mktemp("smollm2_rot") / "rotated.onnx"
    return edgeq.export(small, torch.tensor([[1, 504, 2231, 314]]), path)


@pytest.mark.slow
def test_online_hadamards_merge_into_down_proj(rotated_export):
    model = onnx.load(str(rotated_export))
    hadamards = [n for n in model.graph.node if n.domain == "edgeq" and n.op_type == "Hadamard"]
    assert len(hadamards) == LAYERS
    folded, _ = run_passes(model, ["constant_folding", "fold_rotations", "dead_nodes"])
    assert not [n for n in folded.graph.node if n.op_type == "Hadamard"]
    matmuls = lambda m: sum(n.op_type == "MatMul" for n in m.graph.node)  # noqa: E731
    assert matmuls(folded) == matmuls(model)
    ids = np.array([[1, 504, 2231, 314, 260, 3593, 30, 216]], np.int64)
    before = ort_session(model.SerializeToString()).run(None, {"input_ids": ids})[0]
    after = ort_session(folded.SerializeToString()).run(None, {"input_ids": ids})[0]
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    assert (after.argmax(-1) == before.argmax(-1)).all()
