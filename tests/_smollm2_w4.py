"""SmolLM2-135M W4 as ``edgeq export`` writes it (g64 RTN linears, 4-bit embedding table shared
with lm_head, dynamic batch and sequence), exported once per test session and compiled once per
target; shared by the target tests and the device test (a module cache, since a session fixture
imported into two test modules would run twice)."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, object] = {}


def quantize_smollm2_w4(model, tokenizer):
    """(the model at W4 g64 RTN with its 4-bit g64 tied table, the prompt's token ids [1, 6])."""
    import edgeq
    from edgeq.quant.embedding import quantize_embeddings

    qmodel = edgeq.quantize(model, "w4g64-rtn")
    quantize_embeddings(qmodel, 4, 64)
    return qmodel, tokenizer("The capital of France is", return_tensors="pt").input_ids


def smollm2_w4_first_layers(smollm2, layers: int):
    """``quantize_smollm2_w4`` of SmolLM2-135M cut to its first ``layers`` decoder layers (real
    weights; same shapes and ops)."""
    from transformers import LlamaForCausalLM

    model, tokenizer = smollm2
    config = type(model.config).from_dict({**model.config.to_dict(), "num_hidden_layers": layers})
    small = LlamaForCausalLM(config).eval()
    small.load_state_dict(model.state_dict(), strict=False)
    return quantize_smollm2_w4(small, tokenizer)


def smollm2_w4_onnx(smollm2, tmp_path_factory) -> Path:
    if "onnx" not in _CACHE:
        import torch

        import edgeq

        qmodel, ids = quantize_smollm2_w4(*smollm2)
        with torch.no_grad():
            _CACHE["onnx"] = edgeq.export(qmodel, ids, tmp_path_factory.mktemp("smollm2_w4") / "smollm2_w4.onnx")
    return _CACHE["onnx"]


def smollm2_w4_artifact(target: str, smollm2, tmp_path_factory):
    key = f"artifact:{target}"
    if key not in _CACHE:
        import edgeq

        onnx_path = smollm2_w4_onnx(smollm2, tmp_path_factory)
        _CACHE[key] = edgeq.compile(onnx_path, target=target, out_dir=tmp_path_factory.mktemp(f"smollm2_w4_{target}"))
    return _CACHE[key]
