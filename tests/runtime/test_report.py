"""edgeq validate: numerics against the reference, input sources, and naming the first
diverging node of a corrupted model (onnxruntime and TVM on this host)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.cli import main
from edgeq.errors import ModelFileError, RuntimeExecError
from edgeq.runtime.inputs import load_inputs
from edgeq.runtime.localize import expose_intermediates
from edgeq.runtime.report import validate_model
from edgeq.runtime.rpc import parse_device_url
from edgeq.runtime.validate import Numerics, Tolerance, compare


def _corrupt(onnx_path, out, edit) -> str:
    model = onnx.load(str(onnx_path))
    edit(model)
    onnx.save(model, str(out))
    return str(out)


def _flip_add_to_sub(model):
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]  # the residual add
    add.op_type = "Sub"


def _shift_conv_bias(model, conv_index=1):
    conv = [n for n in model.graph.node if n.op_type == "Conv"][conv_index]
    bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[0] += 5.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    return conv.name


@pytest.fixture(scope="module")
def corrupted(w8a8_pipeline, tmp_path_factory):
    _, onnx_path, _ = w8a8_pipeline
    out = tmp_path_factory.mktemp("corrupt")
    flipped = _corrupt(onnx_path, out / "flipped.onnx", _flip_add_to_sub)
    names = {}
    shifted = _corrupt(onnx_path, out / "shifted.onnx", lambda m: names.setdefault("conv", _shift_conv_bias(m)))
    return {"flipped": flipped, "shifted": shifted, "conv": names["conv"], "dir": out}


def test_cli_names_the_flipped_add_on_onnxruntime_and_tvm(w8a8_pipeline, corrupted, capsys):
    import edgeq

    _, onnx_path, _ = w8a8_pipeline
    artifact = edgeq.compile(corrupted["flipped"], target="cpu", out_dir=corrupted["dir"])
    code = main(["validate", corrupted["flipped"], str(artifact.path), "--reference", str(onnx_path),
                 "--inputs", "digits", "--samples", "64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["ok"]
    for result in report["results"]:
        assert not result["ok"]
        assert result["divergence"]["op_type"] == "Sub"
        assert result["divergence"]["node"] == next(n.name for n in onnx.load(corrupted["flipped"]).graph.node if n.op_type == "Sub")


def test_names_the_conv_whose_bias_was_changed(w8a8_pipeline, corrupted):
    _, onnx_path, _ = w8a8_pipeline
    x = load_inputs("random", onnx.load(corrupted["shifted"]), seed=3, dims={"batch": 8})
    report = validate_model(corrupted["shifted"], [], x, reference=str(onnx_path))
    (result,) = report.results
    assert not result.ok
    assert result.divergence.node == corrupted["conv"] and result.divergence.op_type == "Conv"
    assert "first diverging node: " + corrupted["conv"] in report.table()


def test_uncorrupted_model_passes_without_divergence(digits, w8a8_pipeline):
    _, onnx_path, artifact = w8a8_pipeline
    report = validate_model(onnx_path, [artifact.path], [digits.x_test.numpy()], reference="digits:w8a8")
    assert report.ok, report.table()
    assert [r.numerics.executor for r in report.results] == ["onnxruntime", "tvm"]
    assert all(r.divergence is None for r in report.results)
    assert all(r.numerics.top1_agreement >= 0.995 and r.numerics.max_rel < 0.02 for r in report.results)


def test_torch_reference_cannot_localize_an_ort_only_difference(w8a8_pipeline, corrupted):
    x = load_inputs("digits", onnx.load(corrupted["flipped"]), samples=32)
    report = validate_model(corrupted["flipped"], [], x, reference="digits:w8a8")
    (result,) = report.results
    assert not result.ok and result.divergence is None and "--reference ORIGINAL.onnx" in result.note


def test_expose_intermediates_lists_every_node_output(w8a8_pipeline):
    _, onnx_path, _ = w8a8_pipeline
    model = onnx.load(str(onnx_path))
    exposed, pairs = expose_intermediates(model)
    outputs = [o.name for o in exposed.graph.output]
    assert len(pairs) == sum(len(n.output) for n in model.graph.node)
    assert {name for _, _, name in pairs} <= set(outputs)
    assert len(model.graph.output) == 1  # the original is untouched


def test_npz_and_npy_inputs(w8a8_pipeline, digits, tmp_path):
    _, onnx_path, _ = w8a8_pipeline
    model = onnx.load(str(onnx_path))
    x = digits.x_test[:5].numpy()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x)
    for name in ("x.npy", "x.npz"):
        (loaded,) = load_inputs(str(tmp_path / name), model)
        np.testing.assert_array_equal(loaded, x)
    (rand,) = load_inputs("random", model, seed=1, dims={"batch": 3})
    assert rand.shape == (3, 1, 8, 8) and rand.dtype == np.float32
    np.testing.assert_array_equal(rand, load_inputs("random", model, seed=1, dims={"batch": 3})[0])
    with pytest.raises(ModelFileError, match="missing.npz"):
        load_inputs(str(tmp_path / "missing.npz"), model)


def test_integer_outputs_must_match_exactly():
    ref = np.array([[1, 2, 3]], dtype=np.int8)
    off = compare("x", ref, np.array([[1, 2, 4]], dtype=np.int8))
    assert off.int_mismatches == 1
    assert not Tolerance().accepts(off)
    assert Tolerance(int_exact=False, max_rel=0.5, min_cosine=0.99).accepts(off)
    assert Tolerance().accepts(compare("x", ref, ref.copy()))


def test_nan_never_passes():
    n = Numerics("x", float("nan"), float("nan"), float("nan"), None, None, 4)
    assert not Tolerance().accepts(n)


@pytest.mark.parametrize("url", ["http://h:1", "rpc://host", "tracker://127.0.0.1:9190", "rpc://:9"])
def test_bad_device_urls(url):
    with pytest.raises(RuntimeExecError, match="device"):
        parse_device_url(url)


def test_device_urls():
    assert str(parse_device_url("rpc://127.0.0.1:9190")) == "rpc://127.0.0.1:9190"
    url = parse_device_url("tracker://127.0.0.1:9000/rk3588")
    assert (url.scheme, url.port, url.key) == ("tracker", 9000, "rk3588")


def test_artifact_for_another_target_needs_a_device(w8a8_pipeline, tmp_path):
    import json as _json
    import shutil

    _, onnx_path, artifact = w8a8_pipeline
    fake = tmp_path / "m.arm64.so"
    shutil.copy(artifact.path, fake)
    meta = _json.loads(artifact.meta_path.read_text())
    meta["target"] = "arm64"
    fake.with_suffix(".json").write_text(_json.dumps(meta))
    with pytest.raises(RuntimeExecError, match="edgeq device start arm64"):
        validate_model(onnx_path, [fake], [np.zeros((1, 1, 8, 8), np.float32)])
