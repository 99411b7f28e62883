"""An unreachable device or tracker is a RuntimeExecError naming its URL within seconds (TVM's
own client retries a tracker for 60 s). The bound asserted is loose (20 s): a failure that
should be immediate, not a timing claim."""

from __future__ import annotations

import json
import socket
import struct
import time

import onnx
import pytest
from onnx import TensorProto, helper

from edgeq.cli import main
from edgeq.errors import RuntimeExecError
from edgeq.runtime.rpc import connect

BOUND_S = 20.0


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["rpc://127.0.0.1:{port}", "tracker://127.0.0.1:{port}/arm64"])
def test_unreachable_url_fails_fast_and_names_it(closed_port, scheme):
    url = scheme.format(port=closed_port)
    start = time.monotonic()
    with pytest.raises(RuntimeExecError, match=rf"{url}: no (device|RPC tracker) answers at 127\.0\.0\.1:{closed_port} "
                                               r"\(connection refused\)"):
        connect(url)
    assert time.monotonic() - start < BOUND_S


def test_validate_with_an_unreachable_tracker_is_one_line(tmp_path, closed_port, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "relu.onnx")
    # An arm64 library is only uploaded, never loaded here: an ELF header is all it needs before the connection.
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 183, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    (tmp_path / "relu.arm64.so").write_bytes(header)
    tensor = {"name": "x", "dtype": "float32", "shape": [4]}
    meta = {"target": "arm64", "compile_seconds": 0.0, "size_bytes": 4, "inputs": [tensor], "outputs": [{**tensor, "name": "y"}]}
    (tmp_path / "relu.arm64.json").write_text(json.dumps(meta))
    url = f"tracker://127.0.0.1:{closed_port}/arm64"
    start = time.monotonic()
    code = main(["validate", str(tmp_path / "relu.onnx"), str(tmp_path / "relu.arm64.so"), "--device", url])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == RuntimeExecError.exit_code and err.count("\n") == 0 and url in err, err
    assert elapsed < BOUND_S, elapsed
