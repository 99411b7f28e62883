"""SmolLM2-135M W4 as ``edgeq export`` writes it (g64 RTN linears, 4-bit embedding table shared
with lm_head, dynamic batch and sequence), exported once per test run and compiled once per
target; shared by the target tests and the device tests. Kept on disk in a folder of the run's
temporary tree that every pytest-xdist worker sees, built by the first worker that asks (the
other waits on a lock, then loads it): the export and each full-model compile take minutes on
CI's two cores. Within one worker, a module cache (a session fixture imported into two test
modules would run twice)."""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
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


def _shared_dir(tmp_path_factory) -> Path:
    """The run's folder for built models: above the worker's own base temp under xdist."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "smollm2_w4_shared"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def _locked(tmp_path_factory, key: str):
    """The shared folder, held for this process alone while the block runs."""
    shared = _shared_dir(tmp_path_factory)
    with open(shared / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield shared


def smollm2_w4_onnx(smollm2, tmp_path_factory) -> Path:
    if "onnx" not in _CACHE:
        with _locked(tmp_path_factory, "onnx") as shared:
            final = shared / "onnx"
            if not final.is_dir():  # exported into a staging folder, renamed whole
                import torch

                import edgeq

                stage = shared / f"onnx.partial-{os.getpid()}"
                shutil.rmtree(stage, ignore_errors=True)
                stage.mkdir()
                qmodel, ids = quantize_smollm2_w4(*smollm2)
                with torch.no_grad():
                    edgeq.export(qmodel, ids, stage / "smollm2_w4.onnx")
                os.rename(stage, final)
        _CACHE["onnx"] = final / "smollm2_w4.onnx"
    return _CACHE["onnx"]


def smollm2_w4_artifact(target: str, smollm2, tmp_path_factory):
    key = f"artifact:{target}"
    if key not in _CACHE:
        import edgeq
        from edgeq.targets import get_target
        from edgeq.targets.compile import Artifact

        onnx_path = smollm2_w4_onnx(smollm2, tmp_path_factory)
        spec = get_target(target)
        with _locked(tmp_path_factory, f"artifact-{spec.name}") as shared:
            out = shared / f"artifact-{spec.name}"
            path = out / f"{onnx_path.stem}.{spec.name}.{spec.artifact}"
            if not path.is_file():  # compile renames the library and its .json into place together
                out.mkdir(exist_ok=True)
                path = edgeq.compile(onnx_path, target=target, out_dir=out).path
        _CACHE[key] = Artifact.load(path)
    return _CACHE[key]
