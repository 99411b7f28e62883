"""The built-in CNN compiled for arm64 on the emulated device (qemu-user + TVM RPC).

Needs a running device (`edgeq device start arm64`); the tests skip without one, and fail
instead when EDGEQ_REQUIRE_DEVICE lists arm64 (CI prepares the device and sets it).

Tolerances: the arm64 artifact computes the same QDQ graph in float as the host's; against
PyTorch it may move an activation across a rounding boundary (one quantization step), so top-1
agreement >= 99.5%, max error < 2% of the logits' scale, cosine > 0.9999 (as on the host).
Against the host's TVM build of the same graph: max error < 2% of the scale, top-1 >= 99.5%
(LLVM vectorizes the two targets' reductions differently).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import edgeq
from _devices import assert_aarch64_library, assert_bit_exact_report, integer_digits_cnn, running_arm64_device, uses_arm64_device
from edgeq.cli import main
from edgeq.errors import RuntimeExecError
from edgeq.runtime import device as dev
from edgeq.runtime.device import DeviceError
from edgeq.runtime.executors import TorchExecutor
from edgeq.runtime.report import validate_model
from edgeq.runtime.rpc import RpcExecutor

pytestmark = [pytest.mark.device, uses_arm64_device]


@pytest.fixture(scope="module")
def device():
    return running_arm64_device()


@pytest.fixture(scope="module")
def arm64_artifact(device, w8a8_pipeline, tmp_path_factory):
    _, onnx_path, _ = w8a8_pipeline
    return edgeq.compile(onnx_path, target="arm64", out_dir=tmp_path_factory.mktemp("arm64"))


@pytest.fixture
def private_server(device):
    """A second server of the prepared device on its own port, for tests that kill or freeze it."""
    proc, port = dev.launch_server("arm64", port=device.port + 20)
    yield proc, port
    dev.kill_server(proc.pid)


def test_artifact_is_aarch64(arm64_artifact):
    assert_aarch64_library(arm64_artifact.path)


def test_w8a8_cnn_on_device_matches_pytorch(device, digits, w8a8_pipeline, arm64_artifact):
    qmodel, onnx_path, host_artifact = w8a8_pipeline
    x = digits.x_test.numpy()
    report = validate_model(onnx_path, [host_artifact.path, arm64_artifact.path], [x], reference=TorchExecutor(qmodel),
                            device=device.url)
    on_device = report.result("tvm-rpc:arm64").numerics
    assert on_device.top1_agreement >= 0.995, on_device
    assert on_device.max_rel < 0.02, on_device
    assert on_device.cosine > 0.9999, on_device
    assert report.ok, report.table()


def test_validate_cli_on_device(device, w8a8_pipeline, arm64_artifact, capsys):
    _, onnx_path, _ = w8a8_pipeline
    code = main(["validate", str(onnx_path), str(arm64_artifact.path), "--device", device.url,
                 "--reference", "digits:w8a8", "--inputs", "digits", "--samples", "200", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    on_device = next(r for r in report["results"] if r["numerics"]["executor"] == "tvm-rpc:arm64")
    assert on_device["ok"] and on_device["numerics"]["top1_agreement"] >= 0.995
    assert on_device["numerics"]["elements"] == 200 * 10


@pytest.mark.slow
def test_integer_only_cnn_on_device_is_bit_exact(device, digits, digits_model, tmp_path, capsys):
    """The HAWQ-V3 integer-only CNN (w8a8-dyadic) compiled for arm64: its outputs on the device
    equal the PyTorch integer reference's on the whole test set (0 mismatches; the outputs are
    the dequantized output integers, one-to-one with them)."""
    qmodel, int_path, artifact = integer_digits_cnn(digits, digits_model, tmp_path, ("arm64",))
    code = main(["validate", str(int_path), str(artifact.path), "--device", device.url, "--reference", "digits:w8a8-dyadic",
                 "--inputs", "digits", "--exact", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert_bit_exact_report(report, {"onnxruntime", "tvm-rpc:arm64"}, len(digits.x_test) * 10)
    assert np.array_equal(RpcExecutor(artifact.path, device.url).run([digits.x_test[:32].numpy()])[0],
                          qmodel(digits.x_test[:32]).numpy())


def test_diverging_node_is_named_on_the_device(device, w8a8_pipeline, tmp_path):
    """A copy of the graph with its residual Add flipped to Sub, compiled for arm64: the search
    recompiles the exposed graph for arm64, runs it on the device, and names the Sub."""
    import onnx

    _, onnx_path, _ = w8a8_pipeline
    model = onnx.load(str(onnx_path))
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]
    add.op_type = "Sub"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    artifact = edgeq.compile(broken, target="arm64", out_dir=tmp_path)
    x = np.random.default_rng(5).standard_normal((8, 1, 8, 8)).astype(np.float32)
    report = validate_model(broken, [artifact.path], [x], reference=str(onnx_path), device=device.url)
    result = report.result("tvm-rpc:arm64")
    assert not result.ok
    assert (result.divergence.node, result.divergence.op_type) == (add.name, "Sub")


def test_device_and_host_builds_agree(device, digits, w8a8_pipeline, arm64_artifact):
    from edgeq.runtime import TvmExecutor

    _, _, host_artifact = w8a8_pipeline
    x = digits.x_test[:128].numpy()
    on_device = RpcExecutor(arm64_artifact.path, device.url).run([x])[0]
    here = TvmExecutor(host_artifact.path).run([x])[0]
    scale = np.abs(here).max()
    assert np.abs(on_device - here).max() < 0.02 * scale
    assert (on_device.argmax(1) == here.argmax(1)).mean() >= 0.995


def test_device_that_dies_mid_run_raises_within_bound(private_server, arm64_artifact):
    proc, port = private_server
    ex = RpcExecutor(arm64_artifact.path, f"rpc://127.0.0.1:{port}", call_timeout_s=120)
    x = np.random.default_rng(0).standard_normal((4096, 1, 8, 8)).astype(np.float32)  # several seconds emulated
    killer = threading.Timer(2.0, lambda: os.killpg(proc.pid, signal.SIGKILL))
    start = time.monotonic()
    killer.start()
    with pytest.raises(RuntimeExecError, match="device"):
        ex.run([x])
    killer.cancel()
    assert time.monotonic() - start < 30


def test_frozen_device_times_out(private_server, arm64_artifact):
    proc, port = private_server
    ex = RpcExecutor(arm64_artifact.path, f"rpc://127.0.0.1:{port}", call_timeout_s=5)
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeExecError, match="did not answer within 5 s"):
            ex.run([np.zeros((1, 1, 8, 8), np.float32)])
        assert time.monotonic() - start < 15
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def test_tracker_hands_out_the_device_by_key(device, digits, w8a8_pipeline, arm64_artifact):
    from tvm.rpc.tracker import Tracker

    qmodel, _, _ = w8a8_pipeline
    tracker = Tracker(host="127.0.0.1", port=device.port + 40, port_end=device.port + 60, silent=True)
    proc, _ = dev.launch_server("arm64", port=device.port + 30, key="edgeq-test-arm64", tracker=f"127.0.0.1:{tracker.port}")
    try:
        ex = RpcExecutor(arm64_artifact.path, f"tracker://127.0.0.1:{tracker.port}/edgeq-test-arm64")
        x = digits.x_test[:64].numpy()
        out = ex.run([x])[0]
        ref = TorchExecutor(qmodel).run([x])[0]
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
        assert np.abs(out - ref).max() < 0.02 * np.abs(ref).max()
    finally:
        dev.kill_server(proc.pid)
        tracker.terminate()


def test_status_reports_the_running_device(device, capsys):
    assert main(["device", "status", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["running"] and state["url"] == device.url and state["host"] == "127.0.0.1"


def test_remote_bind_needs_explicit_flag():
    with pytest.raises(DeviceError, match="no authentication"):
        dev.start_device("arm64", host="0.0.0.0")
