"""MobileNet-style CNNs integer-only (issue #17): a tiny MobileNetV2 (depthwise convs, ReLU6,
linear bottlenecks with residual adds) and a tiny MobileNetV3 (Hardswish, squeeze-excite with a
Hardsigmoid gate) through ``w8a8-dyadic`` (and ``w4a8-dyadic``): quantize -> integer-only ONNX ->
onnxruntime, TVM cpu and the arm64 cross-compile (run on the emulated device when it is up).

Integer executors are compared with the PyTorch integer reference by exact equality of the
dequantized outputs, which are one-to-one with the output integers (0 mismatches). The float
model is the second reference: on 64 seeded inputs the integer model's max error is within 2% of
the float outputs' largest magnitude at W8A8 (10% at W4A8) and its cosine similarity >= 0.9995
(0.99 at W4A8); the assertion messages carry the measured numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgeq
from _devices import require_arm64_cross, uses_arm64_device
from _cnn_models import SqueezeExcite, cnn_inputs, tiny_mobilenet_v2, tiny_mobilenet_v3
from edgeq.errors import QuantizationError
from edgeq.passes.integer_check import float_ops_in_integer_region
from edgeq.passes.integerize import export_integer
from edgeq.runtime import OrtExecutor, TvmExecutor

BUILDERS = {"mobilenet_v2": tiny_mobilenet_v2, "mobilenet_v3": tiny_mobilenet_v3}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def mobilenet(request, tmp_path_factory):
    """(name, float model, w8a8-dyadic model, integer-only ONNX path, output folder)."""
    out = tmp_path_factory.mktemp(request.param)
    model = BUILDERS[request.param]()
    qmodel = edgeq.quantize(model, "w8a8-dyadic", calib=cnn_inputs(32, seed=1))
    path = export_integer(qmodel, cnn_inputs(1), out / f"{request.param}_int.onnx")
    return request.param, model, qmodel, path, out


def _float_error(model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max |float - integer| / max |float|, cosine) of the outputs on x."""
    with torch.no_grad():
        ref, got = model(x).flatten().double(), qmodel(x).flatten().double()
    return float((ref - got).abs().max() / ref.abs().max()), float(torch.nn.functional.cosine_similarity(ref, got, 0))


def test_graph_is_integer_only_with_depthwise_convs(mobilenet):
    name, _, _, path, _ = mobilenet
    model = onnx.load(str(path))
    assert float_ops_in_integer_region(model) == []
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node if n.op_type == "ConvInteger"]
    assert sorted(g for g in groups if g > 1) == ([16, 32, 64] if name == "mobilenet_v2" else [8, 24, 48])  # depthwise
    assert ops.count("ReduceSum") == (1 if name == "mobilenet_v2" else 3)  # global pools: head (+ 2 SE)
    if name == "mobilenet_v3":
        # 2 SE multiplies + 7 Hardswish products; 2 Hardsigmoid + 7 Hardswish gates (+ 2 residual
        # adds) clip in int32
        assert ops.count("Mul") == 9 and ops.count("Clip") == 11
    onnx.checker.check_model(model, full_check=True)


def test_onnxruntime_and_tvm_are_bit_exact_with_the_pytorch_integer_reference(mobilenet):
    name, _, qmodel, path, out = mobilenet
    x = cnn_inputs(64, seed=2)
    ref = qmodel(x).numpy()
    got_ort = OrtExecutor(path).run([x.numpy()])[0]
    assert got_ort.shape == (64, 10) and int((got_ort != ref).sum()) == 0
    artifact = edgeq.compile(path, target="cpu", out_dir=out)
    got_tvm = TvmExecutor(artifact.path).run([x.numpy()])[0]
    assert int((got_tvm != ref).sum()) == 0
    assert len(np.unique(ref)) > 15  # the outputs are not all clipped to one value


def test_integer_model_is_close_to_the_float_model(mobilenet):
    name, model, qmodel, _, _ = mobilenet
    rel, cos = _float_error(model, qmodel, cnn_inputs(64, seed=2))
    assert rel <= 0.02 and cos >= 0.9995, f"{name} w8a8-dyadic vs float: max error {rel:.4f} of max |y|, cosine {cos:.6f}"


@pytest.fixture(scope="module")
def arm64_artifact(mobilenet):
    """The integer-only model cross-compiled for arm64 (skips without the cross compiler, fails
    in CI where EDGEQ_REQUIRE_CROSS is set)."""
    require_arm64_cross()
    _, _, _, path, out = mobilenet
    return edgeq.compile(path, target="arm64", out_dir=out / "arm64")


@pytest.mark.parametrize("mobilenet", ["mobilenet_v3"], indirect=True)  # V3 holds every op V2 has
def test_arm64_cross_compile(arm64_artifact):
    assert arm64_artifact.path.stat().st_size > 0


@pytest.mark.device
@uses_arm64_device
@pytest.mark.parametrize("mobilenet", ["mobilenet_v3"], indirect=True)
def test_arm64_device_is_bit_exact(mobilenet, arm64_artifact):
    from _devices import skip_or_fail
    from edgeq.runtime import device as dev
    from edgeq.runtime.rpc import RpcExecutor

    state = dev.device_status("arm64")
    if state is None:
        skip_or_fail("arm64", "the arm64 device is not running (edgeq device start arm64)")
    x = cnn_inputs(16, seed=3)
    got = RpcExecutor(arm64_artifact.path, state.url).run([x.numpy()])[0]
    assert int((got != mobilenet[2](x).numpy()).sum()) == 0


def test_w4a8_mobilenet_v3_is_bit_exact_and_close_to_float(tmp_path):
    model = tiny_mobilenet_v3()
    qmodel = edgeq.quantize(model, "w4a8-dyadic", calib=cnn_inputs(32, seed=1))
    assert all(int(m.qdq.weight_int8.abs().max()) <= 7 for m in qmodel.integer.modules() if hasattr(m, "qdq"))
    path = export_integer(qmodel, cnn_inputs(1), tmp_path / "v3_w4.onnx")
    x = cnn_inputs(64, seed=2)
    assert int((OrtExecutor(path).run([x.numpy()])[0] != qmodel(x).numpy()).sum()) == 0
    rel, cos = _float_error(model, qmodel, x)
    assert rel <= 0.10 and cos >= 0.99, f"mobilenet_v3 w4a8-dyadic vs float: max error {rel:.4f} of max |y|, cosine {cos:.6f}"


def _conv_then(tail_name: str, tail: nn.Module, kernel: int = 1) -> nn.Sequential:
    """A 3 -> 8 channel conv, then ``tail`` under the layer name ``tail_name``."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, kernel, padding=kernel // 2), **{tail_name: tail}))


class _ScaledByConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x) * 0.5


class _SqueezeExciteSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.se = SqueezeExcite(8, 4)
        self.se.gate = nn.Sigmoid()

    def forward(self, x):
        return self.se(self.stem(x))


@pytest.mark.parametrize("model, match", [
    (_conv_then("act", nn.SiLU(), kernel=3), r"layer 'act': SiLU has no integer-only form"),
    (_SqueezeExciteSigmoid(), r"layer 'se.gate': Sigmoid has no integer-only form"),
    (_ScaledByConstant(), r"layer 'mul': mul by a constant has no integer-only form"),
    (_conv_then("pool", nn.AdaptiveAvgPool2d(2)), r"layer 'pool': AdaptiveAvgPool2d\(output_size=2\) has no integer-only form"),
], ids=["silu", "se-sigmoid", "mul-constant", "adaptive-pool-2"])
def test_ops_without_an_integer_form_are_refused_naming_the_layer(model, match):
    with pytest.raises(QuantizationError, match=match):
        edgeq.quantize(model.eval(), "w8a8-dyadic", calib=[cnn_inputs(2)])


class _FunctionalSE(nn.Module):
    """The functional spellings torchvision's MobileNets use: F.relu6, F.hardswish,
    F.adaptive_avg_pool2d(x, 1), F.hardsigmoid, torch.mul, x.mean((2, 3)) without keepdim."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.nn.functional.hardswish(self.dw(x))
        gate = torch.nn.functional.hardsigmoid(self.fc2(torch.nn.functional.relu(self.fc1(torch.nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.head(torch.mul(x, gate).mean((2, 3)))


def test_functional_spellings_are_bit_exact_on_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = _FunctionalSE().eval()
    qmodel = edgeq.quantize(model, "w8a8-dyadic", calib=cnn_inputs(32, seed=1))
    path = export_integer(qmodel, cnn_inputs(1), tmp_path / "functional_int.onnx")
    assert float_ops_in_integer_region(onnx.load(str(path))) == []
    x = cnn_inputs(64, seed=2)
    assert int((OrtExecutor(path).run([x.numpy()])[0] != qmodel(x).numpy()).sum()) == 0
    rel, cos = _float_error(model, qmodel, x)
    assert rel <= 0.02 and cos >= 0.9995, f"functional SE w8a8-dyadic vs float: max error {rel:.4f} of max |y|, cosine {cos:.6f}"
