"""Any model from the Python API: model names wherever a model is taken, the float model as a
second reference, and one report type for ``edgeq.validate`` and ``edgeq validate``.

Tolerances: onnxruntime runs the quantized graph in another summation order than PyTorch:
within 1e-5 of the output's scale for this small CNN. The float bar is
``FLOAT_TOLERANCE`` (cosine >= 0.95, max error <= the scale).
"""

from __future__ import annotations

import textwrap

import pytest
import torch

import edgeq
from edgeq.errors import ModelFileError
from edgeq.runtime.report import ValidationReport

CNN_FILE = '''
import torch
from torch import nn


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10)).eval()


def other_model():
    return make_model(seed=1)


def example_inputs():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
'''


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    path = tmp_path_factory.mktemp("anymodel-api") / "cnn.py"
    path.write_text(textwrap.dedent(CNN_FILE))
    return f"{path}:make_model", f"{path}:other_model"


def test_names_are_taken_wherever_a_model_is(factory, tmp_path):
    name, _ = factory
    loaded = edgeq.load_model(name)
    [x] = edgeq.example_inputs(loaded, batch=4)
    assert x.shape == (4, 3, 8, 8)  # the file's two samples, then seeded ones like them
    qmodel = edgeq.quantize(name, "w8-rtn")
    onnx_path = edgeq.export(name, None, tmp_path / "float.onnx")  # example inputs from the file
    report = edgeq.validate(name, [onnx_path], [x.numpy()])
    assert isinstance(report, ValidationReport) and report.ok and report[0].max_rel < 1e-5
    vs_float = edgeq.compare_with_float(loaded.module, qmodel, (x,), per_layer=True)
    assert vs_float.ok and 0.99 < vs_float.outputs[0].cosine < 1.0
    assert set(vs_float.layers) == {"0", "4"} and all(n.cosine > 0.99 for n in vs_float.layers.values())


def test_float_reference_in_the_api_catches_a_wrong_model(factory, tmp_path):
    name, other = factory
    [x] = edgeq.example_inputs(edgeq.load_model(name), batch=8)
    qmodel = edgeq.quantize(name, "w8-rtn")
    onnx_path = edgeq.export(qmodel, x[:1], tmp_path / "q.onnx")
    good = edgeq.validate(qmodel, [onnx_path], [x.numpy()], float_reference=name)
    assert good.ok and [r.executor for r in good] == ["onnxruntime", "torch vs float", "onnxruntime vs float"]
    assert good[0].max_rel < 1e-5 and good[1].cosine > 0.99
    wrong = edgeq.validate(qmodel, [onnx_path], [x.numpy()], float_reference=other)
    assert wrong[0].ok and not wrong.ok and not wrong[1].ok  # onnxruntime agrees with PyTorch; PyTorch is wrong


def test_a_file_quantized_from_a_factory_asks_for_it(factory, tmp_path):
    from edgeq.quant.serialize import load_quantized, save_quantized

    name, _ = factory
    path = save_quantized(edgeq.quantize(name, "w8-rtn"), tmp_path / "q.safetensors", source=name)
    with pytest.raises(ModelFileError, match="quantized from the Python factory .*cnn.py:make_model.*--source"):
        edgeq.load_model(str(path))
    x = edgeq.example_inputs(edgeq.load_model(name))[0]
    again = load_quantized(path, factory=name)
    with torch.no_grad():
        assert torch.equal(again(x), edgeq.quantize(name, "w8-rtn")(x))


def test_a_name_that_names_nothing(tmp_path):
    with pytest.raises(ModelFileError, match=f"{tmp_path / 'nothing'}: no such file, folder or built-in model"):
        edgeq.quantize(str(tmp_path / "nothing"), "w8-rtn")
    with pytest.raises(ModelFileError, match="cannot tell what inputs"):
        (tmp_path / "bare.py").write_text("from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n")
        edgeq.export(f"{tmp_path / 'bare.py'}:make", None, tmp_path / "bare.onnx")
    assert not (tmp_path / "bare.onnx").exists()
