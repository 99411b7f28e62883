"""ONNX external data must live inside the model's folder: a location that climbs out (``../``),
is absolute, or is a symlink leading out is refused (ModelFileError naming the tensor and the
path) before anything is read or sized, by ``edgeq inspect`` and by every ONNX load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.cli import main
from edgeq.errors import ModelFileError
from edgeq.model_info import model_info
from edgeq.runtime.executors import OrtExecutor
from edgeq.targets.compile import load_onnx

WEIGHT = np.arange(4, dtype=np.float32)


def _external(name: str, location: str) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(WEIGHT.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _model(path, location: str, in_constant: bool = False):
    """y = x + w, with w's data at ``location`` (an initializer, or a Constant node's value)."""
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    inits = [_external("w", location)]
    if in_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=inits.pop()))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


@pytest.fixture
def folders(tmp_path):
    model_dir, outside = tmp_path / "model", tmp_path / "outside"
    model_dir.mkdir()
    outside.mkdir()
    WEIGHT.tofile(outside / "secret.bin")
    (model_dir / "link.bin").symlink_to(outside / "secret.bin")
    return model_dir, outside


@pytest.mark.parametrize("location, why", [
    ("../outside/secret.bin", "which leads to .*outside/secret.bin, outside the model's folder"),
    ("{outside}/secret.bin", "an absolute path"),
    ("link.bin", "which leads to .*outside/secret.bin, outside the model's folder"),
])
@pytest.mark.parametrize("in_constant", [False, True])
def test_data_outside_the_folder_is_refused(folders, capsys, location, why, in_constant):
    model_dir, outside = folders
    location = location.format(outside=outside)
    path = _model(model_dir / "m.onnx", location, in_constant)
    message = rf"m\.onnx: tensor 'w' keeps its data at '{location}'.*{why}"
    with pytest.raises(ModelFileError, match=message):
        model_info(path)
    with pytest.raises(ModelFileError, match=message):
        load_onnx(path)
    assert main(["inspect", str(path), "--json"]) == ModelFileError.exit_code
    captured = capsys.readouterr()
    assert captured.out == "" and "tensor 'w'" in captured.err and str(outside) in captured.err
    with pytest.raises(ModelFileError, match=r"m\.onnx"):  # onnxruntime refuses it too, as a named error
        OrtExecutor(path)


def test_data_inside_the_folder_is_sized_loaded_and_run(folders):
    model_dir, _ = folders
    (model_dir / "weights").mkdir()
    WEIGHT.tofile(model_dir / "weights" / "w.bin")
    path = _model(model_dir / "m.onnx", "weights/w.bin")
    assert model_info(path).file_bytes == path.stat().st_size + WEIGHT.nbytes
    loaded = load_onnx(path)
    assert np.array_equal(onnx.numpy_helper.to_array(loaded.graph.initializer[0]), WEIGHT)
    x = np.ones(4, np.float32)
    assert np.array_equal(OrtExecutor(path).run([x])[0], x + WEIGHT)
