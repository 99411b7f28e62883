"""Hugging Face ResNet in the int8 CNN paths (issue #17): its forward checks the input's channel
count in Python, which torch.fx could not trace, so w8a8 and w8a8-dyadic refused it. BatchNorm
is now folded on a graph traced with the example's input shapes, inside the model itself (it
stays a ResNetForImageClassification), and the dyadic path takes its MaxPool2d (the same uint8
values) and in-place residual add: the integer-only ONNX model is bit-exact with the PyTorch
integer reference and has no float op inside."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import edgeq
from edgeq.passes.integer_check import float_ops_in_integer_region
from edgeq.passes.integerize import export_integer
from edgeq.quant.fold import fold_batchnorm
from edgeq.runtime import OrtExecutor


@pytest.fixture(scope="module")
def resnet():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                                       num_labels=10)
    model = transformers.ResNetForImageClassification(config).eval()
    g = torch.Generator().manual_seed(2)
    for m in model.modules():  # statistics that are not the identity, so that folding shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    images = torch.randn(5, 3, 16, 16, generator=g)
    return model, images


def test_fold_keeps_the_hugging_face_model(resnet):
    model, images = resnet
    folded = fold_batchnorm(model, (images[:1],))
    assert type(folded) is type(model) and folded.config is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6  # the input model is untouched
    torch.testing.assert_close(folded(images).logits, model(images).logits, rtol=1e-4, atol=1e-5)


def test_fold_without_example_names_the_untraceable_model(resnet):
    model, _ = resnet
    with pytest.raises(edgeq.errors.QuantizationError, match="cannot trace ResNetForImageClassification"):
        fold_batchnorm(model)


def test_w8a8_quantizes_every_conv(resnet):
    model, images = resnet
    qmodel = edgeq.quantize(model, "w8a8", calib=images)
    assert type(qmodel) is type(model)
    convs = [m for m in qmodel.modules() if type(m).__name__ == "QDQConv2d"]
    assert len(convs) == 6  # stem, 2 + 2 block convs, 1 shortcut
    cosine = torch.nn.functional.cosine_similarity(qmodel(images).logits.flatten(), model(images).logits.flatten(), dim=0)
    assert cosine > 0.99


def test_dyadic_is_integer_only_and_bit_exact_on_onnxruntime(resnet, tmp_path):
    model, images = resnet
    qmodel = edgeq.quantize(model, "w8a8-dyadic", calib=[images[i:i + 1] for i in range(4)])
    path = export_integer(qmodel, (images[:1],), tmp_path / "resnet_int.onnx")
    graph = onnx.load(str(path))
    assert float_ops_in_integer_region(graph) == []
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("ConvInteger") == 6 and "MaxPool" in ops
    for x in images.split(1):
        got = OrtExecutor(path).run([x.numpy()])[0]
        assert (got == qmodel(x).numpy()).all()
