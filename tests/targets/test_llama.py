"""A LLaMA decoder (SmolLM2's architecture, 2 small layers) exported by torch's dynamo exporter
with a dynamic sequence length, its MatMul weights as int4 blocked DequantizeLinear: TVM compiles
it once with a symbolic sequence length (or specialized on request) and matches onnxruntime at
several lengths; weights stay packed."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgeq.errors import CompileError
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.ort import ort_session
from edgeq.targets import compile as compile_model

GROUP = 32


class _Logits(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    seq = torch.export.Dim("seq", min=2, max=256)
    with torch.no_grad():
        program = torch.onnx.export(_Logits(lm), (torch.randint(0, 256, (1, 8)),), dynamo=True,
                                    dynamic_shapes=({1: seq},), input_names=["input_ids"],
                                    output_names=["logits"], optimize=True, verbose=False, opset_version=21)
    path = tmp_path_factory.mktemp("llama") / "llama.onnx"
    onnx.save(program.model_proto, path)
    return path


def int4_weights(model: onnx.ModelProto, group: int) -> onnx.ModelProto:
    """Every MatMul with a 2-D float initializer B gets int4 weights (symmetric RTN per group of
    ``group`` rows of K) through a blocked DequantizeLinear: standard ONNX, as edgeq exports."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        b = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if b is not None and len(b.dims) == 2 and b.dims[0] % group == 0:
            w = numpy_helper.to_array(b).astype(np.float32)
            blocks = w.reshape(-1, group, w.shape[1])
            scale = np.maximum(np.abs(blocks).max(axis=1), 1e-8) / 7
            q = np.clip(np.round(blocks / scale[:, None, :]), -8, 7).reshape(w.shape)
            name = b.name
            model.graph.initializer.remove(b)
            model.graph.initializer.extend([
                numpy_helper.from_array(q.astype(ml_dtypes.int4), f"{name}.q"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}.scale"),
            ])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale"], [f"{name}.dq"],
                                          axis=0, block_size=group))
            node.input[1] = f"{name}.dq"
            del inits[name]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.fixture(scope="module")
def llama_w4(llama_onnx):
    model = int4_weights(onnx.load(llama_onnx), GROUP)
    onnx.checker.check_model(model, full_check=True)
    path = llama_onnx.with_name("llama_w4.onnx")
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def dynamic_w4_artifact(tmp_path_factory, llama_w4):
    return compile_model(llama_w4, out_dir=tmp_path_factory.mktemp("dynamic"))


def _ort_vs_tvm(onnx_path, artifact, seq):
    ids = np.random.default_rng(seq).integers(0, 256, (1, seq)).astype(np.int64)
    expect = ort_session(str(onnx_path), accuracy_level=0).run(None, {"input_ids": ids})[0]
    got = TvmExecutor(artifact.path).run([ids])[0]
    assert got.shape == expect.shape == (1, seq, 256)
    return np.abs(got - expect).max() / np.abs(expect).max()


@pytest.mark.parametrize("seq", [1, 7, 33])
def test_one_dynamic_artifact_takes_every_sequence_length(dynamic_w4_artifact, llama_w4, seq):
    art = dynamic_w4_artifact
    assert art.specialized is None and art.inputs[0]["shape"] == [1, "seq"]
    # both compute in float32 from the same int4 weights: summation order only
    assert _ort_vs_tvm(llama_w4, art, seq) <= 1e-5


def test_dynamic_artifact_keeps_weights_packed(dynamic_w4_artifact, llama_w4):
    art = dynamic_w4_artifact
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes, (art.weight_bytes, art.onnx_weight_bytes)


def test_unfollowable_shape_arithmetic_says_how_to_specialize(tmp_path):
    """A Reshape to a shape computed by an op the importer cannot evaluate symbolically (TopK of
    the input's shape) fails to import; the error names the dimension to specialize."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "seq"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("TopK", ["s", "k"], ["top", "idx"]),
             helper.make_node("Reshape", ["x", "top"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.array([2], np.int64), "k")])
    path = tmp_path / "topk_shape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(CompileError, match=r"symbolic dimensions seq: to fix one, compile with specialize"):
        compile_model(path, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.so"))


@pytest.mark.slow
@pytest.mark.parametrize("seq", [16])
def test_specialized_w4_llama_matches_onnxruntime(tmp_path, llama_w4, seq):
    art = compile_model(llama_w4, out_dir=tmp_path, specialize={"seq": seq})
    assert art.specialized == {"seq": seq} and art.inputs[0]["shape"] == [1, seq]
    ids = np.random.default_rng(seq).integers(0, 256, (1, seq)).astype(np.int64)
    expect = ort_session(str(llama_w4), accuracy_level=0).run(None, {"input_ids": ids})[0]
    got = TvmExecutor(art.path).run([ids])[0]
    # both compute in float32 from the same int4 weights: summation order only
    assert np.abs(got - expect).max() <= 1e-4 * np.abs(expect).max()
    # the int4 weights stay packed (float32 would be 8x); the rest is the float embedding,
    # norms and the folded rotary/mask tables
    quantized = sum(int(np.prod(t.dims)) for t in onnx.load(llama_w4).graph.initializer if t.data_type == onnx.TensorProto.INT4)
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes + 4096 * seq, (art.weight_bytes, art.onnx_weight_bytes)
    assert art.weight_bytes < art.onnx_weight_bytes + quantized  # far below a float copy (4 bytes each)
