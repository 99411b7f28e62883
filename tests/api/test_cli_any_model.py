"""Any model from the CLI (issue #17's first "Done when"): a folder written by ``save_pretrained``
(tiny random-init Llama) and a Python factory (a tiny CNN in a file) each go
``edgeq quantize`` -> ``edgeq export`` -> ``edgeq compile --target cpu,arm64`` -> ``edgeq run`` /
``edgeq validate``, every step through the CLI (in-process, ``edgeq.cli.main``).

Tolerances: onnxruntime and TVM compute the same quantized graph as PyTorch in another summation
order: outputs within 1e-4 of the logits' scale. The quantized model against its float model
(random-init weights, W4 g64 / W8 per channel): cosine >= 0.95, the float bar of
``edgeq.runtime.float_reference``; a different float model (another seed) falls far below it.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch

from _devices import require_arm64_cross, uses_arm64_device
from edgeq.cli import main

REL = 1e-4  # of the reference's largest magnitude


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_llama_folder(folder, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    return folder


CNN_FILE = '''
import torch
from torch import nn


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def example_inputs():
    return (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
'''


def max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The save_pretrained folder, quantized and exported by the CLI: (folder, q.safetensors, q.onnx, quantize JSON)."""
    d = tmp_path_factory.mktemp("anymodel-llama")
    folder = tiny_llama_folder(d / "llama")
    q, onnx_path, report = d / "q.safetensors", d / "q.onnx", d / "quantize.json"
    from contextlib import redirect_stdout

    with open(report, "w") as f, redirect_stdout(f):
        assert main(["quantize", str(folder), "w4g64-rtn", "-o", str(q), "--json"]) == 0  # was: invalid choice
    assert main(["export", str(q), "-o", str(onnx_path)]) == 0  # was: "quantized model not found"
    return folder, q, onnx_path, json.loads(report.read_text())


def test_quantize_reports_error_against_the_float_model(llama):
    _, _, _, report = llama
    [vs_float] = report["vs_float"]["outputs"]
    assert report["vs_float"]["ok"] and vs_float["cosine"] >= 0.95 and vs_float["max_rel"] < 0.5, vs_float  # 0.10 here
    assert vs_float["cosine"] < 1.0  # W4 changed the outputs: the comparison is not of a model with itself


@pytest.fixture(scope="module")
def llama_artifacts(llama, tmp_path_factory):
    """``edgeq compile --target cpu,arm64`` of the exported folder (cpu alone without the cross compiler)."""
    from contextlib import redirect_stdout

    out = tmp_path_factory.mktemp("anymodel-llama-art")
    targets = "cpu,arm64" if shutil.which("aarch64-linux-gnu-g++") else "cpu"
    with open(out / "compile.json", "w") as f, redirect_stdout(f):
        assert main(["compile", str(llama[2]), "--target", targets, "-o", str(out), "--json"]) == 0
    return {r["target"]: r for r in json.loads((out / "compile.json").read_text())}


@pytest.fixture(scope="module")
def llama_inputs(llama, tmp_path_factory):
    """(in.npz path, token ids, the quantized PyTorch model's logits on them)."""
    from edgeq.model_spec import load_model
    from edgeq.runtime.executors import TorchExecutor

    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1)).numpy()
    path = tmp_path_factory.mktemp("anymodel-in") / "in.npz"
    np.savez(path, input_ids=ids)
    return path, ids, TorchExecutor(load_model(str(llama[1])).module).run([ids])[0]


def test_save_pretrained_folder_through_every_stage(llama, llama_artifacts, llama_inputs, tmp_path, capsys):
    folder, q, onnx_path, _ = llama
    inputs, _, want = llama_inputs
    artifact = llama_artifacts["cpu"]["artifact"]
    for source in (onnx_path, artifact):
        code, _, err = cli(capsys, "run", source, "--inputs", inputs, "-o", tmp_path / "out.npz")
        assert code == 0, err
        got = np.load(tmp_path / "out.npz")["logits"]
        assert got.shape == want.shape and max_rel(want, got) < REL, (source, max_rel(want, got))

    code, out, err = cli(capsys, "validate", onnx_path, artifact, "--reference", q, "--float-reference", folder,
                         "--inputs", inputs, "--json")
    assert code == 0, err
    results = {r["numerics"]["executor"]: r for r in json.loads(out)["results"]}
    assert set(results) == {"onnxruntime", "tvm", "torch vs float", "onnxruntime vs float", "tvm vs float"}
    assert all(r["ok"] for r in results.values())
    assert results["tvm"]["numerics"]["max_rel"] < REL and results["tvm vs float"]["numerics"]["cosine"] >= 0.95


@uses_arm64_device
def test_save_pretrained_folder_cross_compiles_for_arm64(llama_artifacts, llama_inputs, tmp_path, capsys):
    """The arm64 build exists; where the emulated device runs, ``edgeq run --device`` matches PyTorch."""
    from edgeq.runtime import device as dev

    require_arm64_cross()
    arm64 = llama_artifacts["arm64"]
    assert arm64["bytes"] > 0
    code, _, err = cli(capsys, "run", arm64["artifact"])  # not this host's: names the --device to pass
    assert code == 11 and "--device" in err
    state = dev.device_status("arm64")
    if state is None:
        return  # the device tests (tests/runtime/test_device_arm64.py) skip or fail on their own
    inputs, _, want = llama_inputs
    code, _, err = cli(capsys, "run", arm64["artifact"], "--device", state.url, "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert code == 0, err
    assert max_rel(want, np.load(tmp_path / "out.npz")["logits"]) < REL


def test_export_takes_the_folder_with_a_preset(llama, llama_inputs, tmp_path, capsys):
    """``edgeq export FOLDER --preset`` (was: "quantized model not found", and with --preset
    "is already quantized") gives the graph ``quantize`` then ``export`` gives: RTN is
    deterministic, so the logits agree to float32 rounding."""
    folder, _, _, _ = llama
    inputs, _, want = llama_inputs
    code, _, err = cli(capsys, "export", folder, "--preset", "w4g64-rtn", "-o", tmp_path / "direct.onnx")
    assert code == 0, err
    code, _, err = cli(capsys, "run", tmp_path / "direct.onnx", "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert code == 0, err
    assert max_rel(want, np.load(tmp_path / "out.npz")["logits"]) < REL


def test_float_reference_catches_a_wrong_quantized_model(llama, tmp_path, capsys):
    """Every executor agrees with PyTorch, but PyTorch is not the float model (another seed):
    only the float reference says so."""
    _, q, onnx_path, _ = llama
    other = tiny_llama_folder(tmp_path / "other", seed=1)
    code, out, err = cli(capsys, "validate", onnx_path, "--reference", q, "--float-reference", other, "--dim", "seq=8", "--json")
    assert code == 1, err
    results = {r["numerics"]["executor"]: r for r in json.loads(out)["results"]}
    assert results["onnxruntime"]["ok"] and not results["torch vs float"]["ok"]
    assert results["torch vs float"]["numerics"]["cosine"] < 0.5


def test_python_factory_through_every_stage(tmp_path, capsys):
    (tmp_path / "cnn.py").write_text(textwrap.dedent(CNN_FILE))
    factory = f"{tmp_path / 'cnn.py'}:make_model"
    q, onnx_path = tmp_path / "cnn-w8.safetensors", tmp_path / "cnn.onnx"
    code, out, err = cli(capsys, "quantize", factory, "w8-rtn", "-o", q, "--per-layer", "--json")
    assert code == 0, err
    report = json.loads(out)["vs_float"]
    assert report["ok"] and report["outputs"][0]["cosine"] > 0.99 and len(report["layers"]) == 3

    code, _, err = cli(capsys, "export", q, "-o", onnx_path)  # the file names a factory: edgeq does not run it unasked
    assert code == 4 and "--source" in err and not onnx_path.exists()
    code, _, err = cli(capsys, "export", q, "--source", factory, "-o", onnx_path)
    assert code == 0, err

    targets = "cpu,arm64" if shutil.which("aarch64-linux-gnu-g++") else "cpu"
    code, out, err = cli(capsys, "compile", onnx_path, "--target", targets, "-o", tmp_path / "art", "--json")
    assert code == 0, err
    artifact = next(r["artifact"] for r in json.loads(out) if r["target"] == "cpu")

    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    from edgeq.model_spec import load_model
    from edgeq.runtime.executors import TorchExecutor

    want = TorchExecutor(load_model(str(q), factory=factory).module).run([x])[0]
    code, _, err = cli(capsys, "run", artifact, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert code == 0, err
    got = next(iter(np.load(tmp_path / "out.npz").values()))
    assert max_rel(want, got) < REL
    code, _, err = cli(capsys, "run", q, "--source", factory, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "torch.npz")
    assert code == 0, err
    assert np.array_equal(next(iter(np.load(tmp_path / "torch.npz").values())), want)

    code, out, err = cli(capsys, "validate", onnx_path, artifact, "--float-reference", factory, "--inputs", tmp_path / "x.npy")
    assert code == 0, err
    assert "tvm vs float" in out
    if targets == "cpu":
        require_arm64_cross()


def test_a_name_that_names_nothing_is_refused_with_its_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code, _, err = cli(capsys, "quantize", missing, "w4g64-rtn", "-o", tmp_path / "q.safetensors")
    assert code == 4 and str(missing) in err
    code, _, err = cli(capsys, "run", missing)
    assert code == 4 and str(missing) in err
