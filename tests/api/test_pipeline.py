"""End to end on real components: W8A8 in PyTorch -> ONNX -> onnxruntime and TVM (host CPU).

Tolerances: the exported graph computes in float on the same quantized values as PyTorch, so
the only differences are float summation order in the convs, which can move an activation
across a rounding boundary of the next QuantizeLinear (one step of that activation's scale).
Hence top-1 agreement >= 99.5% and a max error under 2% of the logits' scale.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

import edgeq
from edgeq.models.digits_cnn import accuracy
from edgeq.runtime import OrtExecutor, TorchExecutor, TvmExecutor, validate


def test_quantized_accuracy_within_one_point(digits, digits_model, w8a8_pipeline):
    qmodel, _, _ = w8a8_pipeline
    with torch.no_grad():
        float_acc = accuracy(digits_model(digits.x_test), digits.y_test)
        quant_acc = accuracy(qmodel(digits.x_test), digits.y_test)
    assert quant_acc >= float_acc - 0.01


def test_export_is_standard_qdq(w8a8_pipeline):
    _, onnx_path, _ = w8a8_pipeline
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8_weights) == 5  # four convs and the head
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_onnxruntime_and_tvm_match_pytorch(digits, w8a8_pipeline):
    qmodel, onnx_path, artifact = w8a8_pipeline
    x = digits.x_test.numpy()
    ort_n, tvm_n = validate(TorchExecutor(qmodel), [OrtExecutor(onnx_path), TvmExecutor(artifact.path)], [x])
    for n in (ort_n, tvm_n):
        assert n.top1_agreement >= 0.995, n
        assert n.max_rel < 0.02, n
        assert n.cosine > 0.9999, n


def test_tvm_runs_any_batch_size(digits, w8a8_pipeline):
    qmodel, _, artifact = w8a8_pipeline
    tvm_ex = TvmExecutor(artifact.path)
    for n in (1, 7):
        x = digits.x_test[:n].numpy()
        out = tvm_ex.run([x])[0]
        assert out.shape == (n, 10)


def test_public_api_validate(digits, w8a8_pipeline):
    qmodel, onnx_path, artifact = w8a8_pipeline
    report = edgeq.validate(qmodel, [onnx_path, artifact.path], [digits.x_test[:64].numpy()])
    assert [r.executor for r in report] == ["onnxruntime", "tvm"]
    assert all(r.top1_agreement >= 0.98 for r in report)


def test_artifact_metadata(w8a8_pipeline):
    _, _, artifact = w8a8_pipeline
    loaded = type(artifact).load(artifact.path)
    assert loaded.inputs[0]["name"] == "input"
    assert loaded.inputs[0]["shape"][1:] == [1, 8, 8]
    assert loaded.target == "cpu"
    assert np.isfinite(loaded.compile_seconds)
