"""SmolLM2-135M W4 as ``edgeq export`` writes it (g64 RTN linears, 4-bit embedding table shared
with lm_head, dynamic batch and sequence), exported once per test session and compiled once per
target; shared by the target tests and the device test (a module cache, since a session fixture
imported into two test modules would run twice)."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, object] = {}


def smollm2_w4_onnx(smollm2, tmp_path_factory) -> Path:
    if "onnx" not in _CACHE:
        import torch

        import edgeq
        from edgeq.quant.embedding import quantize_embeddings

        model, tokenizer = smollm2
        qmodel = edgeq.quantize(model, "w4g64-rtn")
        quantize_embeddings(qmodel, 4, 64)
        ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
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
