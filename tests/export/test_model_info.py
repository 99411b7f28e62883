"""``edgeq inspect`` and ``model_info`` report what the file holds, counted by hand here."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from edgeq.cli import main
from edgeq.errors import ModelFileError
from edgeq.export_passes.lower_to_dequantize_linear import lower_to_dequantize_linear
from edgeq.maths.packing import pack
from edgeq.model_info import model_info
from edgeq.opset import DOMAIN, attach_functions


def two_layer_model(path, n=16, k=64, group=32):
    """x -> LowBitLinear(3 bits) -> LowBitLinear(4 bits, lowered to uint4 DequantizeLinear)."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i, bits in enumerate((3, 4)):
        width = k if i == 0 else n
        q = pack(torch.from_numpy(rng.integers(0, 1 << bits, (n, width))), bits).numpy()
        inits += [onnx.numpy_helper.from_array(q, f"q{i}"),
                  onnx.numpy_helper.from_array(np.ones((n, width // group if i == 0 else 1), np.float16), f"s{i}"),
                  onnx.numpy_helper.from_array(np.zeros((n, width // group if i == 0 else 1), np.uint8), f"z{i}")]
        nodes.append(helper.make_node("LowBitLinear", [prev, f"q{i}", f"s{i}", f"z{i}"], [f"y{i}"], domain=DOMAIN,
                                      name=f"l{i}", bits=bits, group_size=group if i == 0 else width))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, ["batch", n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert lower_to_dequantize_linear(model, 21) == 1
    attach_functions(model)
    onnx.save(model, str(path))
    return path


def test_model_info_counts(tmp_path):
    info = model_info(two_layer_model(tmp_path / "m.onnx"))
    assert info.opsets == {"ai.onnx": 21, "edgeq": 1}
    assert info.edgeq_ops == {"LowBitLinear": 1}
    assert info.op_histogram == {"edgeq.LowBitLinear": 1, "DequantizeLinear": 1, "MatMul": 1}
    # 3-bit 16x64: 384 packed bytes + 2 groups x 16 rows of fp16 scales (64 B) and uint8 zeros (32 B)
    # 4-bit 16x16 as uint4 [16, 16]: 128 B + per-channel float32 scales (64 B) and uint4 zeros (8 B)
    assert info.quantized_weights == 16 * 64 + 16 * 16
    assert info.quantized_weight_bytes == (384 + 64 + 32) + (128 + 64 + 8)
    assert info.weight_bytes_by_dtype == {"uint8": 384 + 32, "float": 64, "uint4": 136, "float16": 64}
    assert info.quantized_bits_per_weight == pytest.approx(8 * 680 / 1280)
    assert [(v.name, v.dtype, v.shape) for v in info.inputs] == [("x", "float", ["batch", 64])]


def test_inspect_command_json(tmp_path, capsys):
    path = two_layer_model(tmp_path / "m.onnx")
    assert main(["inspect", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edgeq_ops"] == {"LowBitLinear": 1} and out["outputs"][0]["shape"] == ["batch", 16]
    assert main(["inspect", str(path)]) == 0
    assert "LowBitLinear x1" in capsys.readouterr().out


def test_inspect_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.onnx: not an ONNX model"):
        model_info(bad)
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == ModelFileError.exit_code
    assert "missing.onnx: no such file" in capsys.readouterr().err
