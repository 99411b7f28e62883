"""A compiled artifact's ``.json`` is checked against the Artifact schema and a corrupt library is
a named error: a ModelFileError naming the file (and the field), never a TVM or KeyError traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgeq
from edgeq.cli import main
from edgeq.errors import ModelFileError
from edgeq.runtime.executors import TvmExecutor
from edgeq.targets.compile import Artifact


@pytest.fixture(scope="module")
def relu_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("relu")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), out / "relu.onnx")
    return out / "relu.onnx", edgeq.compile(out / "relu.onnx", target="cpu", out_dir=out)


@pytest.fixture
def artifact_copy(tmp_path, relu_artifact):
    """A fresh copy of the compiled artifact (library + .json) to damage."""
    _, art = relu_artifact
    lib = tmp_path / art.path.name
    shutil.copy(art.path, lib)
    shutil.copy(art.meta_path, lib.with_suffix(".json"))
    return lib


def test_the_intact_artifact_loads_and_runs(artifact_copy):
    x = np.array([-1.0, 0.0, 2.0, -3.0], np.float32)
    assert np.array_equal(TvmExecutor(artifact_copy).run([x])[0], np.maximum(x, 0))


def test_device_code_is_found_beside_a_moved_library(artifact_copy):
    """The .json names the PTX file, not where it was written, so a copied artifact folder reads
    its own PTX."""
    artifact_copy.with_suffix(".ptx").write_text("// ptx")
    _edit(artifact_copy, lambda d: d.update(device_code=artifact_copy.with_suffix(".ptx").name))
    assert Path(Artifact.load(artifact_copy).device_code).read_text() == "// ptx"


def _edit(lib, change):
    meta = lib.with_suffix(".json")
    data = json.loads(meta.read_text())
    change(data)
    meta.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("target"), r"missing field 'target'"),
    (lambda d: d.pop("inputs"), r"missing field 'inputs'"),
    (lambda d: d.update(surprise=1), r"unknown field 'surprise'"),
    (lambda d: d.update(size_bytes="big"), r"field 'size_bytes' is 'big', expected <class 'int'>"),
    (lambda d: d.update(compile_seconds=True), r"field 'compile_seconds' is True"),
    (lambda d: d.update(tvm_target=[1]), r"field 'tvm_target' is \[1\], expected dict \| None"),
    (lambda d: d.update(inputs={"x": 1}), r"field 'inputs' is"),
    (lambda d: d["inputs"][0].pop("dtype"), r"field 'inputs'\[0\] is"),
    (lambda d: d["outputs"][0].update(dtype="not-a-dtype"), r"field 'outputs'\[0\] is"),
    (lambda d: d["outputs"][0].update(shape=[-4]), r"field 'outputs'\[0\] is"),
])
def test_ill_formed_metadata_names_the_file_and_field(artifact_copy, change, message):
    _edit(artifact_copy, change)
    with pytest.raises(ModelFileError, match=rf"relu\.cpu\.json: {message}"):
        Artifact.load(artifact_copy)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", "\xff\xfe"])
def test_metadata_that_is_not_a_json_object(artifact_copy, text):
    artifact_copy.with_suffix(".json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelFileError, match=r"relu\.cpu\.json: (not JSON|expected a JSON object)"):
        Artifact.load(artifact_copy)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 3], lambda b: b[:-100], lambda b: b"\0" * len(b), lambda b: b"",
                                    lambda b: Path(shutil.which("ls")).read_bytes()])
def test_corrupt_library_is_a_named_error(artifact_copy, damage):
    artifact_copy.write_bytes(damage(artifact_copy.read_bytes()))
    with pytest.raises(ModelFileError, match=r"relu\.cpu\.so: not a loadable TVM artifact"):
        TvmExecutor(artifact_copy)


def test_validate_cli_on_a_corrupt_artifact_is_one_line(relu_artifact, artifact_copy, capsys):
    onnx_path, _ = relu_artifact
    _edit(artifact_copy, lambda d: d.pop("outputs"))
    assert main(["validate", str(onnx_path), str(artifact_copy)]) == ModelFileError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "relu.cpu.json: missing field 'outputs'" in err, err


def _elf(bits: int, machine: int, segment_end: int) -> bytes:
    """A little-endian ELF shared-library header with one program header whose segment ends at
    ``segment_end`` (past the end of these bytes: a truncated file)."""
    import struct

    if bits == 64:
        head = struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, segment_end, segment_end, 4096)
    else:
        head = struct.pack("<HHIIIIIHHHHHH", 3, machine, 1, 0, 52, 0, 0, 52, 32, 1, 40, 0, 0)
        phdr = struct.pack("<IIIIIIII", 1, 0, 0, 0, segment_end, segment_end, 5, 4096)
    return b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9) + head + phdr


@pytest.mark.parametrize("target, bits, machine", [("arm64", 64, 183), ("armv7", 32, 40)])
def test_truncated_device_library_is_refused_before_upload(tmp_path, target, bits, machine):
    """Checked here, before any connection (the URL has no server): a truncated library would
    crash the device's server when it maps it."""
    from edgeq.runtime.rpc import RpcExecutor

    lib = tmp_path / f"relu.{target}.so"
    lib.write_bytes(_elf(bits, machine, segment_end=1 << 20))
    tensor = {"name": "x", "dtype": "float32", "shape": [4]}
    lib.with_suffix(".json").write_text(json.dumps({"target": target, "compile_seconds": 0.0, "size_bytes": lib.stat().st_size,
                                                    "inputs": [tensor], "outputs": [tensor]}))
    with pytest.raises(ModelFileError, match=rf"relu\.{target}\.so: not a loadable TVM artifact \(truncated: segment 0 ends"):
        RpcExecutor(lib, "rpc://127.0.0.1:1")
    lib.write_bytes(_elf(bits, 62, segment_end=0))  # whole, but x86-64 code
    with pytest.raises(ModelFileError, match=r"machine 62: not a shared library for (aarch64|arm)"):
        RpcExecutor(lib, "rpc://127.0.0.1:1")


@pytest.mark.parametrize("target", ["arm64", "armv7"])
def test_real_cross_artifacts_pass_the_library_check(relu_artifact, tmp_path, target):
    import os

    from edgeq.errors import TargetError
    from edgeq.runtime.executors import check_shared_library
    from edgeq.targets import get_target

    spec = get_target(target)
    try:
        spec.require_compiler()
    except TargetError as exc:
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    onnx_path, _ = relu_artifact
    art = edgeq.compile(onnx_path, target=target, out_dir=tmp_path)
    check_shared_library(art.path, spec.machine)
    with pytest.raises(ModelFileError, match="not a shared library for x86-64"):
        check_shared_library(art.path, "x86-64")
