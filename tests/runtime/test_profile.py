"""edgeq profile: latency statistics, per-operator breakdowns from onnxruntime's profiler and
the Relax VM's instrument hook, JSON and PNG output, and the recipe sweep's accuracies
(checked against PyTorch). No timing thresholds: times depend on the machine."""

from __future__ import annotations

import json

import onnx
import torch

import edgeq
from edgeq.cli import main
from edgeq.models.digits_cnn import accuracy
from edgeq.runtime import OrtExecutor, TvmExecutor
from edgeq.runtime.profile import by_op, latency, ort_op_times, tvm_op_times

PNG = b"\x89PNG\r\n\x1a\n"


def test_latency_statistics(digits, w8a8_pipeline):
    _, onnx_path, artifact = w8a8_pipeline
    x = [digits.x_test[:4].numpy()]
    for ex in (OrtExecutor(onnx_path, threads=1), TvmExecutor(artifact.path)):
        lat = latency(ex, x, warmup=2, repeat=9)
        assert lat.repeat == 9 and lat.executor == ex.name
        assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms


def test_tvm_breakdown_counts_every_conv(digits, w8a8_pipeline):
    _, onnx_path, artifact = w8a8_pipeline
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(onnx_path)).graph.node)
    times = tvm_op_times(TvmExecutor(artifact.path), [digits.x_test[:4].numpy()], repeat=3)
    assert sum(t.calls for t in times if "conv2d" in t.op.split("_")) == convs  # fused or not
    assert "vm.builtin" in {t.op for t in times}
    assert all(t.total_ms >= 0 for t in times)


def test_ort_breakdown_has_one_call_per_node_and_run(digits, w8a8_pipeline):
    _, onnx_path, _ = w8a8_pipeline
    times = ort_op_times(onnx_path, [digits.x_test[:4].numpy()], repeat=3, threads=1)
    assert times and all(t.calls == 1 for t in times)
    assert any("Conv" in op for op in by_op(times))


def test_profile_cli_writes_json_and_plot(w8a8_pipeline, tmp_path, capsys):
    _, onnx_path, artifact = w8a8_pipeline
    code = main(["profile", str(onnx_path), str(artifact.path), "--inputs", "digits", "--batch", "8",
                 "--warmup", "1", "--repeat", "5", "--out", str(tmp_path), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [lat["executor"] for lat in result["latency"]] == ["onnxruntime", "tvm"]
    assert set(result["ops"]) == {"onnxruntime (1 thread)", "TVM cpu"}
    assert (tmp_path / "ops.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "profile.json").read_text())["batch"] == 8


def test_recipe_sweep_reports_pytorch_accuracy(digits, digits_model, tmp_path, capsys):
    code = main(["profile", "--recipes", "float,w8a8", "--warmup", "1", "--repeat", "3", "--out", str(tmp_path), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    by_recipe = {r["recipe"]: r for r in result["recipes"]}
    qmodel = edgeq.quantize(digits_model, "w8a8", calib=digits.x_train[:512])
    with torch.no_grad():
        assert by_recipe["float"]["top1"] == accuracy(digits_model(digits.x_test), digits.y_test)
        assert by_recipe["w8a8"]["top1"] == accuracy(qmodel(digits.x_test), digits.y_test)
    assert by_recipe["w8a8"]["onnx_bytes"] < by_recipe["float"]["onnx_bytes"]
    assert set(by_recipe["w8a8"]["latency"]) == {"onnxruntime", "tvm"}
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == PNG
