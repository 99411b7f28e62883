"""No input file can run code: the PyTorch reference (and any model a command takes) is named
by ``edgeq.model_spec.load_model``, which never unpickles; quantized files' metadata is checked."""

from __future__ import annotations

import io
import json
import os
import zipfile

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import main
from edgeq.errors import ModelFileError
from edgeq.model_spec import load_model

FACTORY = """
import torch

def make_model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)
"""


def _linear_onnx(path, linear: torch.nn.Linear):
    """The ONNX graph of ``linear`` (y = x Wᵀ + b), written by hand: a reference to validate against."""
    w = numpy_helper.from_array(linear.weight.detach().numpy().T.copy(), "w")
    b = numpy_helper.from_array(linear.bias.detach().numpy(), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def _evil_pt2(path, marker):
    """A genuine torch.export archive whose pickled sample inputs run ``touch marker`` when unpickled."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    honest = path.with_name("honest.pt2")
    torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (torch.randn(4, 3),)), str(honest))
    payload = io.BytesIO()
    torch.save(Evil(), payload)
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            planted = info.filename.endswith("sample_inputs/model.pt")
            dst.writestr(info, payload.getvalue() if planted else src.read(info.filename))
    return path


@pytest.fixture
def linear_files(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    torch.manual_seed(0)
    return _linear_onnx(tmp_path / "linear.onnx", torch.nn.Linear(3, 2)), factory


def test_validate_reference_pt2_never_runs_its_pickle(tmp_path, linear_files, capsys):
    onnx_path, _ = linear_files
    marker = tmp_path / "pwned"
    evil = _evil_pt2(tmp_path / "evil.pt2", marker)
    code = main(["validate", str(onnx_path), "--reference", str(evil)])
    err = capsys.readouterr().err
    assert code == ModelFileError.exit_code and "pickle" in err and "evil.pt2" in err, err
    assert not marker.exists(), "the planted pickle ran"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_pickle_formats_are_refused_by_name(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match=rf"model\{suffix}: a \{suffix} file is a pickle"):
        load_model(str(path))


def test_validate_against_a_python_factory_file(linear_files, capsys):
    onnx_path, factory = linear_files
    code = main(["validate", str(onnx_path), "--reference", f"{factory}:make_model", "--json", "--max-rel", "1e-6"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    (numerics,) = report["results"][0]["outputs"]
    assert numerics["max_rel"] <= 1e-6


def test_factory_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("my_models:make_model")
    torch.manual_seed(0)
    assert torch.equal(loaded.module.weight, torch.nn.Linear(3, 2).weight)
    assert (loaded.source, loaded.kind) == ("factory", None)


def test_factory_errors_are_named(tmp_path):
    (tmp_path / "f.py").write_text("def make_model():\n    return 3\n\ndef broken():\n    raise KeyError('x')\n")
    with pytest.raises(ModelFileError, match=r"make_model\(\) returned int, not a torch.nn.Module"):
        load_model(f"{tmp_path / 'f.py'}:make_model")
    with pytest.raises(ModelFileError, match=r"broken\(\) failed: KeyError"):
        load_model(f"{tmp_path / 'f.py'}:broken")
    with pytest.raises(ModelFileError, match=r"has no function 'nope'"):
        load_model(f"{tmp_path / 'f.py'}:nope")
    with pytest.raises(ModelFileError, match=r"no such file"):
        load_model(f"{tmp_path / 'missing.py'}:make_model")
    with pytest.raises(ModelFileError, match=r"no such file, folder or built-in model"):
        load_model("no-such-model")


@pytest.fixture
def tiny_llama_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama", model


def test_huggingface_folder_loads_from_safetensors(tiny_llama_folder):
    folder, model = tiny_llama_folder
    loaded = load_model(str(folder))
    assert (loaded.kind, loaded.source) == ("causal-lm", "huggingface")
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded.module(ids).logits, model(ids).logits)


def test_huggingface_folder_with_only_a_pickle_is_refused(tiny_llama_folder):
    folder, model = tiny_llama_folder
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match=r"holds only pytorch_model\.bin \(pickles, which edgeq never loads\)"):
        load_model(str(folder))


def test_corrupt_gguf_is_a_named_error(tmp_path):
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(ModelFileError, match=r"m\.gguf: not a GGUF model transformers can load"):
        load_model(str(bad))


@pytest.fixture(scope="module")
def quantized_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "d8.safetensors"
    assert main(["quantize", "digits-cnn", "w8-rtn", "-o", str(out)]) == 0
    return out


def test_quantized_safetensors_loads_with_its_kind(quantized_digits):
    loaded = load_model(str(quantized_digits))
    assert (loaded.kind, loaded.source) == ("vision", "edgeq-quantized")
    assert loaded.module.edgeq_recipe.bits == 8


def _with_metadata(src, dst, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    meta.update(changes)
    save_file(tensors, str(dst), metadata={k: v for k, v in meta.items() if v is not None})
    return dst


def _layers(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["layers"])


@pytest.mark.parametrize("tamper, message", [
    (lambda layers: {"source": "os.system"}, r"metadata 'source': 'os.system' is not a built-in model"),
    (lambda layers: {"layers": "{not json"}, r"metadata 'layers': not JSON"),
    (lambda layers: {"hadamards": None}, r"metadata 'hadamards': missing"),
    (lambda layers: {"recipe": '{"method": "pickle"}'}, r"metadata 'recipe': unknown recipe method 'pickle'"),
    (lambda layers: {"layers": json.dumps({n: {**s, "scale_dtype": "load"} for n, s in layers.items()})},
     r"field 'scale_dtype': 'load' is not one of float16"),
    (lambda layers: {"layers": json.dumps({n: {**s, "bits": "8"} for n, s in layers.items()})},
     r"field 'bits': ill-typed value '8'"),
    (lambda layers: {"layers": json.dumps({n: {**s, "extra": 1} for n, s in layers.items()})},
     r"expected the fields .*got .*'extra'"),
])
def test_tampered_quantized_metadata_is_a_named_error(tmp_path, quantized_digits, tamper, message):
    bad = _with_metadata(quantized_digits, tmp_path / "bad.safetensors", **tamper(_layers(quantized_digits)))
    with pytest.raises(ModelFileError, match=rf"bad\.safetensors: .*{message}"):
        load_model(str(bad))


@pytest.mark.parametrize("make, kind", [
    (lambda t: t.BertModel(t.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64)), "encoder"),
    (lambda t: t.BertForSequenceClassification(t.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, intermediate_size=64)), "classifier"),
    (lambda t: t.ViTModel(t.ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64)), "vision"),
])
def test_kind_comes_from_the_config(tmp_path, make, kind):
    import transformers

    model = make(transformers)
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert (loaded.kind, type(loaded.module).__name__) == (kind, type(model).__name__)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor), name
