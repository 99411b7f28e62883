"""Whole models through ``edgeq.export``: stock onnxruntime (accuracy level 0) matches the PyTorch
quantized model within 1e-4 of the output's scale (max |reference|); bad input fails with one
ExportError line and leaves no file behind."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

import edgeq
from edgeq.errors import ExportError
from edgeq.quant.embedding import quantize_embeddings
from edgeq.quant.weight_only_recipes import GPTQRecipe, RTNRecipe
from edgeq.quant.weight_only import WeightOnlyLinear
from edgeq.runtime.ort import ort_session

TOL = 1e-4


def op_histogram(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def float_matrices(path) -> list[str]:
    """Float initializers fed straight into a MatMul, Gemm, Conv or Gather: unquantized weights."""
    model = onnx.load(str(path))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}
    return sorted({i for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv", "Gather") for i in n.input if i in floats})


def assert_matches(path, model, inputs: dict[str, torch.Tensor], reference):
    session = ort_session(path)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        ref = reference(model, *inputs.values()).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()


def _call(model, x):
    return model(x)


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def cnn_w4(digits_model):
    # the 1-channel stem has 9 weights per output channel: no 4-bit packing; it stays float
    return edgeq.quantize(digits_model, RTNRecipe(bits=4, group_size=None, skip=("stem.*",)))


@pytest.mark.parametrize("weight_format", ["auto", "edgeq"])
def test_cnn_w4(tmp_path, digits, cnn_w4, weight_format):
    path = edgeq.export(cnn_w4, digits.x_test[:1], tmp_path / "cnn.onnx", weight_format=weight_format)
    onnx.checker.check_model(str(path), full_check=True)
    ops = op_histogram(path)
    if weight_format == "auto":  # 3 convs and the head: uint4 blocked DequantizeLinear
        assert ops["DequantizeLinear"] == 4 and ops["BitShift"] == 0
    else:  # head as LowBitLinear, conv weights unpacked from uint8 by standard ops
        assert ops["LowBitLinear"] == 1 and ops["BitShift"] == 3 and ops["DequantizeLinear"] == 0
    assert float_matrices(path) == ["stem.0.weight"]  # no quantized weight was folded to float
    assert_matches(path, cnn_w4, {"input": digits.x_test[:64]}, _call)


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def quantized_llama(base, bits, group_size, embedding_bits=4, recipe=RTNRecipe, calib=None, **knobs):
    model = edgeq.quantize(base, recipe(skip=("lm_head",), bits=bits, group_size=group_size, **knobs), calib=calib)
    quantize_embeddings(model, embedding_bits, group_size)
    return model


@pytest.mark.parametrize("bits,opset,weight_format,expect", [
    (4, 21, "auto", {"DequantizeLinear": 14, "LowBitLinear": 1}),  # lm_head shares the embedding's table
    (4, 21, "edgeq", {"LowBitLinear": 15}),
    (3, 21, "auto", {"LowBitLinear": 15}),
    (2, 21, "auto", {"LowBitLinear": 15}),
    (2, 25, "dequantize_linear", {"DequantizeLinear": 14, "LowBitLinear": 1}),
])
def test_llama_dynamic_batch_and_sequence(tmp_path, tiny_llama, bits, opset, weight_format, expect):
    model = quantized_llama(tiny_llama, bits, 32)
    path = edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "llm.onnx", opset=opset, weight_format=weight_format)
    ops = op_histogram(path)
    assert {k: ops[k] for k in expect} == expect
    assert float_matrices(path) == []
    proto = onnx.load(str(path))
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert [i.name for i in proto.graph.input] == ["input_ids"] and dims == ["batch", "seq"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    for shape in [(1, 1), (3, 17)]:
        assert_matches(path, model, {"input_ids": torch.randint(0, 256, shape)}, _logits)


def test_llama_hadamard_gptq(tmp_path, tiny_llama):
    """QuaRot rotation + GPTQ: the online Hadamard before each down_proj is one edgeq.Hadamard node."""
    calib = [torch.randint(0, 256, (2, 16)) for _ in range(2)]
    model = quantized_llama(tiny_llama, 4, 32, recipe=GPTQRecipe, calib=calib, hadamard=True)
    path = edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "llm.onnx")
    ops = op_histogram(path)
    assert ops["Hadamard"] == 2 and ops["DequantizeLinear"] + ops["LowBitLinear"] == 15
    assert float_matrices(path) == []  # embedding, lm_head and every linear are quantized in the file
    assert_matches(path, model, {"input_ids": torch.randint(0, 256, (2, 9))}, _logits)


@pytest.mark.parametrize("factor_dtype", ["float16", "int8"])
def test_llama_lrqmm(tmp_path, tiny_llama, factor_dtype):
    from edgeq.quant.lrqmm import LRQMMRecipe

    model = quantized_llama(tiny_llama, 3, 32, recipe=LRQMMRecipe, rank=4, factor_dtype=factor_dtype)
    path = edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "llm.onnx")
    assert op_histogram(path)["LowRankLinear"] == 14
    assert float_matrices(path) == []
    assert_matches(path, model, {"input_ids": torch.randint(0, 256, (2, 9))}, _logits)


def test_llama_lopro(tmp_path, tiny_llama):
    from edgeq.quant.lopro import LoProRecipe

    model = quantized_llama(tiny_llama, 2, 32, recipe=LoProRecipe, rank=4, block_size=32, quantizer="rtn")
    path = edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "llm.onnx", weight_format="edgeq")
    ops = op_histogram(path)
    # per layer: a permutation Gather, a block Hadamard, the 2-bit core and the 8-bit salient block
    assert ops["Hadamard"] == 14 and ops["LowBitLinear"] == 2 * 14 + 1
    assert_matches(path, model, {"input_ids": torch.randint(0, 256, (2, 9))}, _logits)


def test_external_data_inside_output_folder(tmp_path, tiny_llama):
    model = quantized_llama(tiny_llama, 4, 32)
    path = edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "out" / "llm.onnx", external_data="weights/llm.bin")
    initializers = onnx.load(str(path), load_external_data=False).graph.initializer
    external = [t for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"weights/llm.bin"}
    assert all(t.ByteSize() < 1100 for t in initializers if t.data_location != onnx.TensorProto.EXTERNAL)
    assert (tmp_path / "out" / "weights" / "llm.bin").stat().st_size > 40_000
    assert_matches(path, model, {"input_ids": torch.randint(0, 256, (2, 6))}, _logits)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["llm.onnx", "weights"]


@pytest.mark.parametrize("location", ["../escape.bin", "/tmp/abs.bin", "a/../../escape.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, cnn_w4, digits, location):
    with pytest.raises(ExportError, match="leaves the output folder"):
        edgeq.export(cnn_w4, digits.x_test[:1], tmp_path / "m.onnx", external_data=location)
    assert list(tmp_path.iterdir()) == []


def test_int2_below_opset_25_names_the_opset(tmp_path, tiny_llama):
    model = quantized_llama(tiny_llama, 2, 32)
    with pytest.raises(ExportError, match=r"model\.layers\.0\.self_attn\.q_proj: .*need opset 25 \(asked for 21\)"):
        edgeq.export(model, torch.randint(0, 256, (1, 5)), tmp_path / "m.onnx", weight_format="dequantize_linear")
    assert list(tmp_path.iterdir()) == []


class PatchedLinear(WeightOnlyLinear):
    """A weight-only layer whose forward differs: edgeq must not guess how to export it."""

    def forward(self, x):
        return super().forward(x) * 2


def test_module_without_rule_is_named(tmp_path, digits, cnn_w4):
    import copy

    model = copy.deepcopy(cnn_w4)
    head = model.head
    model.head = PatchedLinear(head.in_features, head.out_features, head.bits, head.group_size, head.qweight, head.scales, head.zeros, head.bias)
    with pytest.raises(ExportError, match=r"^head \(.*PatchedLinear\) has no export rule$"):
        edgeq.export(model, digits.x_test[:1], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_failure_leaves_no_file_and_restores_the_model(tmp_path, digits, cnn_w4):
    with pytest.raises(ExportError, match="opset 17 is not supported"):
        edgeq.export(cnn_w4, digits.x_test[:1], tmp_path / "m.onnx", opset=17)
    with pytest.raises(ExportError, match="unknown weight_format"):
        edgeq.export(cnn_w4, digits.x_test[:1], tmp_path / "m.onnx", weight_format="int4")
    with pytest.raises(ExportError, match="torch.onnx export of DigitsCNN failed"):
        edgeq.export(cnn_w4, digits.x_test[:1, :, :4], tmp_path / "m.onnx")  # 4 columns: the pool fails
    assert list(tmp_path.iterdir()) == []
    assert type(cnn_w4.head) is WeightOnlyLinear  # the export twin was swapped back
