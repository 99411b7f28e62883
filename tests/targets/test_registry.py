"""Every registered target compiles the built-in CNN (float and W8A8); cross artifacts carry the
right machine code; the host artifact matches onnxruntime; a missing compiler names its package."""

from __future__ import annotations

import os

import struct
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeq
from edgeq.errors import TargetError
from edgeq.runtime.executors import OrtExecutor, TvmExecutor
from edgeq.targets import get_target, register_target, target_names
from edgeq.targets.registry import _TARGETS

# ELF e_machine numbers (System V ABI)
E_MACHINE = {"x86-64": 62, "aarch64": 183, "arm": 40, "hexagon": 164}


def elf_machines(artifact: Path) -> set[int]:
    """e_machine of the shared library, or of every object in an object archive."""
    blobs = []
    if artifact.suffix == ".tar":
        with tarfile.open(artifact) as tar:
            blobs = [tar.extractfile(m).read(20) for m in tar.getmembers() if m.isfile()]
    else:
        blobs = [artifact.read_bytes()[:20]]
    machines = set()
    for head in blobs:
        assert head[:4] == b"\x7fELF", f"{artifact} holds a non-ELF file"
        endian = "<" if head[5] == 1 else ">"
        machines.add(struct.unpack(endian + "H", head[18:20])[0])
    return machines


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory, digits, digits_model):
    """The built-in CNN exported float, W8A8 (QDQ) and integer-only (dyadic requantize)."""
    from edgeq.passes.integerize import export_integer

    out = tmp_path_factory.mktemp("cnn")
    example = torch.as_tensor(digits.x_test[:1])
    float_path = edgeq.export(digits_model, example, out / "cnn_float.onnx")
    qmodel = edgeq.quantize(digits_model, "w8a8", calib=digits.x_train[:256])
    w8a8_path = edgeq.export(qmodel, example, out / "cnn_w8a8.onnx")
    dyadic = edgeq.quantize(digits_model, "w8a8-dyadic", calib=digits.x_train[:256])
    integer_path = export_integer(dyadic, digits.x_test[:1], out / "cnn_integer.onnx")
    return {"float": float_path, "w8a8": w8a8_path, "integer": integer_path}


def _can_build(name: str) -> bool:
    try:
        get_target(name).require_compiler()
        return True
    except TargetError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("name", target_names())
def test_every_target_compiles_the_cnn(tmp_path, cnn_files, name):
    spec = get_target(name)
    if not _can_build(name):
        message = f"{spec.cross_compiler} not installed (Debian package {spec.compiler_package})"
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):  # CI installs every cross compiler
            pytest.fail(message)
        pytest.skip(message)
    # float and integer-only everywhere (the bar); W8A8 QDQ on the host is enough
    kinds = {k: p for k, p in cnn_files.items() if k != "w8a8" or name == "cpu"}
    for kind, path in kinds.items():
        art = edgeq.compile(path, target=name, out_dir=tmp_path)
        assert art.path.exists() and art.path.suffix == f".{spec.artifact}"
        assert art.size_bytes == art.path.stat().st_size > 0
        assert elf_machines(art.path) == {E_MACHINE[spec.machine]}, (name, kind)
        # Every kind keeps its weights as stored: float, 8-bit conv weights (integer ConvInteger
        # and QDQ convs, dequantized inside the kernel), int32 requantize constants.
        assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes, (kind, art.weight_bytes, art.onnx_weight_bytes)
        if spec.is_gpu and art.device_code:
            ptx = Path(art.device_code).read_text()
            assert f".target {spec.gpu_arch}" in ptx
            assert ".entry" in ptx


def test_gpu_targets_name_their_architecture():
    for name in ("cuda-sm80", "cuda-sm90"):
        spec = get_target(name)
        assert spec.tvm().attrs["arch"] == spec.gpu_arch == f"sm_{name[-2:]}"


@pytest.mark.parametrize("kind", ["float", "w8a8", "integer"])
def test_host_artifact_matches_onnxruntime_on_the_cnn(tmp_path, cnn_files, digits, kind):
    art = edgeq.compile(cnn_files[kind], target="cpu", out_dir=tmp_path)
    x = np.ascontiguousarray(digits.x_test[:16], dtype=np.float32)
    expect = OrtExecutor(cnn_files[kind]).run([x])[0]
    got = TvmExecutor(art.path).run([x])[0]
    if kind == "integer":  # integers inside, dequantized once at the output: bit for bit
        assert np.array_equal(got, expect)
    # float conv/linear in a different summation order; W8A8 dequantizes to float in both
    assert np.abs(got - expect).max() <= 1e-4 * max(1.0, np.abs(expect).max())
    assert (got.argmax(1) == expect.argmax(1)).all()


def test_missing_cross_compiler_names_its_package(tmp_path, cnn_files):
    spec = replace(get_target("arm64"), name="arm64-missing", cross_compiler="edgeq-no-such-g++",
                   compiler_package="g++-edgeq-missing")
    register_target(spec)
    try:
        with pytest.raises(TargetError, match=r"edgeq-no-such-g\+\+.*Debian package g\+\+-edgeq-missing"):
            edgeq.compile(cnn_files["float"], target="arm64-missing", out_dir=tmp_path)
    finally:
        _TARGETS.pop("arm64-missing")
    assert not any(tmp_path.iterdir())


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="known targets: cpu, arm64"):
        get_target("sparc")
