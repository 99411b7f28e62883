"""The kernel harness's host side, without an emulator: the VM executable read from an
artifact's ELF file drives the model with every kernel forwarded through a registered function
(here to the host build's own kernels), and gives the artifact's outputs bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import edgeq
from edgeq.errors import RuntimeExecError
from edgeq.runtime.device import harness_device_for, is_harness_device
from edgeq.runtime.executors import TvmExecutor
from edgeq.runtime.kernel_harness import Elf, HarnessError, kernel_names, kernel_table_source, library_bin, vm_executable
from edgeq.runtime.report import validate_model


@pytest.fixture(scope="module")
def integer_cnn(digits, digits_model, tmp_path_factory):
    from edgeq.passes.integerize import export_integer

    out = tmp_path_factory.mktemp("harness_host")
    qmodel = edgeq.quantize(digits_model, "w8a8-dyadic", calib=digits.x_train[:512])
    path = export_integer(qmodel, digits.x_test[:1], out / "digits_int.onnx")
    return path, edgeq.compile(path, target="cpu", out_dir=out)


def test_vm_executable_from_the_elf_file_drives_forwarded_kernels(integer_cnn, digits):
    import tvm
    import tvm_ffi
    from tvm import relax

    _, artifact = integer_cnn
    elf = Elf(artifact.path.read_bytes(), str(artifact.path))
    names = kernel_names(elf)
    assert any("conv_integer" in n for n in names) and any("dyadic_requantize" in n for n in names)
    executable = vm_executable(library_bin(elf, relocatable=False), str(artifact.path))
    lib = tvm.runtime.load_module(str(artifact.path))
    called = []

    def forward(name):
        kernel = next(m.get_function(name, True) for m in (lib, *lib.imports) if m.get_function(name, True) is not None)

        def call(*args):
            called.append(name)
            kernel(*args)

        return call

    for name in names:
        tvm_ffi.register_global_func(f"{name}", forward(name), override=True)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = digits.x_test[:32].numpy()
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(out, TvmExecutor(artifact.path).run([x])[0])
    assert set(called) <= set(names) and len(called) >= 8


def test_not_an_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="not a little-endian ELF"):
        Elf(b"not an elf file", "x.so")
    elf = Elf(open("/bin/true", "rb").read(), "/bin/true")
    with pytest.raises(HarnessError, match="not an edgeq/TVM artifact"):
        library_bin(elf, relocatable=False)


def test_kernel_table_names_each_kernel():
    source = kernel_table_source(["fused_a", "b"])
    assert '{"fused_a", __tvm_ffi_fused_a}' in source and "edgeq_kernel_count = 2" in source


def test_devices_by_target():
    assert harness_device_for("armv7") == "armv7"
    assert harness_device_for("hexagon-v73") == "hexagon-sim"
    assert harness_device_for("arm64") is None
    assert is_harness_device("hexagon-sim") and not is_harness_device("rpc://127.0.0.1:9190")


def test_cross_artifact_without_device_names_the_harness_device(integer_cnn, tmp_path):
    path, _ = integer_cnn
    artifact = edgeq.compile(path, target="hexagon-v73", out_dir=tmp_path)
    with pytest.raises(RuntimeExecError, match="--device hexagon-sim"):
        validate_model(path, [artifact.path], [np.zeros((1, 1, 8, 8), np.float32)])
