"""Int8-activation kernels of the packed low-bit linears (``act_bits=8``, targets/int8_lowbit.py).

Exact references: the integer parts bit for bit against numpy (the int32 sums of int8
activations times unpacked weights, zero points included, on inputs whose quantization is exact;
the activation quantization itself through one-hot weights, where y = d·xq is one float product).
The whole linear against the float reference within the bound that int8 activation rounding
allows: |x - d·xq| <= d/2 per element, so |y - y_float| <= sum_g d_g/2 · sum_{k in g} |w[j, k]|.
onnxruntime's MatMulNBits at accuracy level 4 quantizes activations the same way (per row, per
block of K, symmetric int8): on the same weights the two differ only where a product x·(1/d)
rounds differently (edgeq multiplies by 127/max|x|, onnxruntime by 1/(max|x|/127)); at most one
activation step in a few elements, far below the int8 error itself (measured: 2e-7 of the
output scale, against 6e-3 for either vs the float reference).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import te

from edgeq.errors import CompileError
from edgeq.maths.packing import pack
from edgeq.targets import compile as compile_model
from edgeq.targets import get_target
from edgeq.targets.int8_lowbit import GEMM_MIN_ROWS, dot_isa, gemm_columns, int8_kernel, vector_bytes
from edgeq.targets.lower_lowbit import packed_linear_te
from edgeq.targets.registry import host_cpu_flags
from _devices import running_arm64_device, uses_arm64_device

HOST_FLAGS = host_cpu_flags()
# x86 instruction families and the /proc/cpuinfo flags the host needs to run them
X86_ISAS = {
    "avx512vnni": ({"mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}, {"avx512_vnni", "avx512bw", "avx512vl"}),
    "avxvnni": ({"mcpu": "x86-64-v3", "mattr": ["+avxvnni"]}, {"avx_vnni", "avx2"}),
    "avx512bw": ({"mcpu": "x86-64-v4"}, {"avx512bw", "avx512vl"}),
    "avx2": ({"mcpu": "x86-64-v3"}, {"avx2", "fma"}),
}
RUNNABLE = [isa for isa, (_, needs) in X86_ISAS.items() if needs <= HOST_FLAGS]


def _x86_target(isa: str):
    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", **X86_ISAS[isa][0]})


def _build(m, k, n, bits, group, isa, bias=False, scales_dtype="float32"):
    """The int8 kernel for X [m, K] · W [N, K] built for this host with ``isa``."""
    x = te.placeholder((m, k), "float32", "x")
    qweight = te.placeholder((n, k * bits // 8), "uint8", "qweight")
    scales = te.placeholder((n, k // group), scales_dtype, "scales")
    zeros = te.placeholder((n, k // group), "float32", "zeros")
    b = te.placeholder((n,), "float32", "bias") if bias else None
    y = packed_linear_te(x, qweight, scales, zeros, b, bits=bits, group_size=group)
    func = te.create_prim_func([x, qweight, scales, zeros, *([b] if bias else []), y])
    width = vector_bytes(isa, bits, group)
    assert width, f"{isa} has no kernel for {bits} bits in groups of {group}"
    kernel = int8_kernel(func, bits, group, isa, width).with_attr("global_symbol", "kernel")
    return tvm.tirx.build(kernel, target=_x86_target(isa))["kernel"]


def _run(fn, x, q, scales, zeros, bits, bias=None):
    dev = tvm.cpu()
    packed = pack(torch.from_numpy(q), bits).numpy()
    args = [tvm.runtime.tensor(a, dev) for a in (x, packed, scales, zeros, *([bias] if bias is not None else []))]
    out = tvm.runtime.tensor(np.zeros((x.shape[0], q.shape[0]), np.float32), dev)
    fn(*args, out)
    return out.numpy()


def quantize_rows(x, group):
    """numpy reference of the activation quantization: per row and group, d = max|x| / 127,
    xq = round_half_even(x · (127 / max|x|)) (0 for an all-zero group), all in float32."""
    m, k = x.shape
    blocks = x.reshape(m, k // group, group)
    amax = np.abs(blocks).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    xq = np.clip(np.rint(blocks * inv), -127, 127).astype(np.int32).reshape(m, k)
    return xq, (amax[..., 0] / np.float32(127)).astype(np.float32)


def _exact_inputs(rng, m, k, n, bits, group):
    """Integer activations with max|x| = 127 in every group (so d = 1 and xq = x exactly), unit
    scales and integer zero points: every float step of the kernel is then exact."""
    x = rng.integers(-127, 128, (m, k)).astype(np.float32)
    x.reshape(m, k // group, group)[:, :, 0] = rng.choice([-127.0, 127.0], (m, k // group))
    q = rng.integers(0, 2**bits, (n, k))
    zeros = rng.integers(0, 2**bits, (n, k // group)).astype(np.float32)
    return x, q, np.ones((n, k // group), np.float32), zeros


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("bits,group", [(4, 128), (4, 32), (2, 64), (8, 32)])
def test_integer_dot_products_bit_exact(isa, bits, group):
    """int32 sums of int8 activations × unpacked weights minus zero point × activation sums."""
    if not vector_bytes(isa, bits, group):
        pytest.skip(f"{isa} keeps the float kernel for {bits}-bit weights (int16 pair sums could overflow)")
    rng = np.random.default_rng(bits * 100 + group)
    m, k, n = 3, 512, 24
    x, q, scales, zeros = _exact_inputs(rng, m, k, n, bits, group)
    got = _run(_build(m, k, n, bits, group, isa), x, q, scales, zeros, bits)
    expected = x.astype(np.int64) @ (q - np.repeat(zeros, group, 1)).astype(np.int64).T
    assert np.array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("isa", [isa for isa in RUNNABLE if isa in ("avx512vnni", "avx2")])  # vpdpbusd; vpmaddubsw
@pytest.mark.parametrize("m,k,n,bits,group", [
    (1, 576, 12, 4, 64),  # SmolLM2's K: 9 groups, one left after the zero-point terms' vectors of 8
    (2, 64, 7, 4, 64),  # one group per row; 7 weight rows: tasks of one row
    (1, 224, 10, 4, 32),  # 7 groups; tasks of two rows
    (3, 256, 6, 8, 128),  # 8-bit weights, two vector steps per group
    (1, 64, 7, 4, 64),  # one row: 7 claims of one weight row, 7 chunks
    (1, 1024, 520, 4, 128),  # one row: 26 claims of 5 blocks in 16 chunks of 2, the last 3 chunks empty
    (1, 4096, 512, 4, 128),  # one row: 64 claims of 2 blocks in chunks of 5 (odd, not 4), the last 3 chunks empty
    (1, 256, 6, 8, 128),  # one row, 8-bit weights
])
def test_one_row_kernel_shape_classes_bit_exact(isa, m, k, n, bits, group):
    """The per-row kernels on the shape classes that take other paths: groups left over, one
    group per row, leftover weight rows, several steps per group; at one row (decode) the blocks
    that threads claim from each other, in chunks with and without leftovers. Integer parts and
    bias bit for bit, on every one of 20 calls (the claims race differently each time)."""
    if not vector_bytes(isa, bits, group):
        pytest.skip(f"{isa} keeps the float kernel for {bits}-bit weights")
    rng = np.random.default_rng(m * 1000 + k + n)
    x, q, scales, zeros = _exact_inputs(rng, m, k, n, bits, group)
    bias = rng.integers(-50, 50, n).astype(np.float32)
    fn = _build(m, k, n, bits, group, isa, bias=True)
    expected = x.astype(np.int64) @ (q - np.repeat(zeros, group, 1)).astype(np.int64).T + bias.astype(np.int64)
    for _ in range(20):
        assert np.array_equal(_run(fn, x, q, scales, zeros, bits, bias), expected.astype(np.float32))


@pytest.mark.parametrize("isa", [isa for isa in RUNNABLE if isa in ("avx512vnni", "avx2")])  # vpdpbusd; vpmaddubsw
@pytest.mark.parametrize("bits,group,n", [(4, 32, 48), (2, 64, 64), (8, 32, 64), (4, 256, 64), (4, 32, 40)])
def test_prefill_gemm_bit_exact(isa, bits, group, n):
    """The column-lane GEMM (prefill: a symbolic number of rows, from GEMM_MIN_ROWS on; register
    tiles of rows plus single leftover rows; one or two column vectors per task; one group per
    row) and, below GEMM_MIN_ROWS or where the columns do not fill its vectors (40 on AVX-512),
    the per-row kernel of the same function: integer parts and bias bit for bit."""
    if not gemm_columns(isa, bits, group):
        pytest.skip(f"{isa} keeps the float kernel for {bits}-bit weights")
    rng = np.random.default_rng(bits * 10 + group)
    k = 256
    fn = _build(te.var("rows"), k, n, bits, group, isa, bias=True)
    for m in (3, GEMM_MIN_ROWS + 3):
        x, q, scales, zeros = _exact_inputs(rng, m, k, n, bits, group)
        bias = rng.integers(-50, 50, n).astype(np.float32)
        got = _run(fn, x, q, scales, zeros, bits, bias)
        expected = x.astype(np.int64) @ (q - np.repeat(zeros, group, 1)).astype(np.int64).T + bias.astype(np.int64)
        assert np.array_equal(got, expected.astype(np.float32)), f"rows {m}"


@pytest.mark.parametrize("isa", RUNNABLE)
def test_activation_quantization_bit_exact(isa):
    """One-hot weights make y[i, j] = d · xq[i, j]: the kernel's int8 activations and scales match
    the numpy reference bit for bit, ties to even included, and an all-zero group gives 0."""
    rng = np.random.default_rng(1)
    m, k, group = 2, 256, 32
    x = rng.normal(size=(m, k)).astype(np.float32) * rng.uniform(0.01, 50, (m, 1)).astype(np.float32)
    x[0, :group] = 0  # an all-zero group: d = 0, no division by zero
    x[1, group:2 * group] = np.arange(group) - 15.5  # halves ...
    x[1, group] = 127.0  # ... and max|x| = 127, so 127 / max|x| = 1: exact ties, rounded to even
    q = np.eye(k, dtype=np.int64)
    got = _run(_build(m, k, k, 4, group, isa), x, q, np.ones((k, k // group), np.float32),
               np.zeros((k, k // group), np.float32), 4)
    xq, d = quantize_rows(x, group)
    expected = (np.repeat(d, group, 1) * xq.astype(np.float32)).astype(np.float32)
    assert np.array_equal(got, expected)
    assert np.array_equal(got[1, group + 1:2 * group], (np.rint(x[1, group + 1:2 * group])).astype(np.float32))


@pytest.mark.parametrize("isa", [isa for isa in RUNNABLE if isa in ("avx512vnni", "avx2")])
@pytest.mark.parametrize("m", [1, 3, GEMM_MIN_ROWS + 3])  # one row (claims), per-row kernel, prefill GEMM
def test_float16_scales_same_as_float32(isa, m):
    """Scales stored as float16 (pack_lowbit_matmul keeps them so where they are exact) give the
    float32-scale kernel's outputs bit for bit: the kernels convert each scale exactly."""
    rng = np.random.default_rng(m)
    k, n, bits, group = 576, 64, 4, 64
    x = rng.normal(size=(m, k)).astype(np.float32)
    q = rng.integers(0, 16, (n, k))
    zeros = rng.integers(0, 16, (n, k // group)).astype(np.float32)
    scales = rng.uniform(0.005, 0.02, (n, k // group)).astype(np.float16)
    wide = _run(_build(m, k, n, bits, group, isa), x, q, scales.astype(np.float32), zeros, bits)
    narrow = _run(_build(m, k, n, bits, group, isa, scales_dtype="float16"), x, q, scales, zeros, bits)
    assert np.array_equal(wide, narrow) and np.abs(wide).max() > 0


def activation_rounding_bound(x, w, group):
    """Per output: sum over groups of d_g/2 · sum_{k in g} |w[j, k]| (see the module docstring)."""
    _, d = quantize_rows(x, group)
    per_group = np.abs(w).reshape(w.shape[0], -1, group).sum(-1)  # [N, groups]
    return 0.5 * d @ per_group.T


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("bits,group", [(4, 128), (2, 64), (8, 32)])
def test_linear_within_activation_rounding_bound(isa, bits, group):
    if not vector_bytes(isa, bits, group):
        pytest.skip(f"{isa} keeps the float kernel for {bits}-bit weights")
    rng = np.random.default_rng(7)
    m, k, n = 5, 512, 36
    x = rng.normal(size=(m, k)).astype(np.float32)
    q = rng.integers(0, 2**bits, (n, k))
    zeros = rng.integers(0, 2**bits, (n, k // group)).astype(np.float32)
    scales = rng.uniform(0.005, 0.02, (n, k // group)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    w = (q - np.repeat(zeros, group, 1)) * np.repeat(scales, group, 1)
    reference = x.astype(np.float64) @ w.T + bias
    got = _run(_build(m, k, n, bits, group, isa, bias=True), x, q, scales, zeros, bits, bias)
    bound = activation_rounding_bound(x, w, group)
    float_slack = 1e-5 * np.abs(reference).max()
    assert np.all(np.abs(got - reference) <= bound + float_slack)
    assert np.abs(got - reference).max() > 0  # int8 activations: not the float path


def dq_matmul_model(q, scales, zeros, group, bits=4) -> onnx.ModelProto:
    """Y = X @ DequantizeLinear(W [K, N] blocked along K), the form onnxruntime fuses into
    MatMulNBits (q, scales, zeros given as [N, K] / [N, K / group])."""
    kind = ml_dtypes.uint4 if bits == 4 else np.uint8
    n, k = q.shape
    inits = [numpy_helper.from_array(q.T.astype(kind), "w"), numpy_helper.from_array(scales.T.copy(), "s"),
             numpy_helper.from_array(zeros.T.astype(kind), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0, block_size=group),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.fixture(scope="module")
def w4_model(tmp_path_factory):
    rng = np.random.default_rng(3)
    n, k, group = 96, 512, 128
    q = rng.integers(0, 16, (n, k))
    zeros = rng.integers(0, 16, (n, k // group))
    # float16 values, as edgeq's quantizers store them: the artifacts keep float16 scales
    scales = rng.uniform(0.005, 0.02, (n, k // group)).astype(np.float16).astype(np.float32)
    path = tmp_path_factory.mktemp("int8") / "w4.onnx"
    onnx.save(dq_matmul_model(q, scales, zeros, group), path)
    w = (q - np.repeat(zeros, group, 1)) * np.repeat(scales, group, 1)
    return path, w.astype(np.float32), group


def test_compile_act_bits_8_on_this_host(w4_model, tmp_path):
    from edgeq.runtime.executors import TvmExecutor

    path, w, group = w4_model
    x = np.random.default_rng(0).normal(size=(7, w.shape[1])).astype(np.float32)
    reference = x.astype(np.float64) @ w.T
    exact = compile_model(path, target="cpu", out_dir=tmp_path, name="f32")
    assert exact.act_bits == 32 and exact.int8_kernels is None
    assert np.abs(TvmExecutor(exact.path).run([x])[0] - reference).max() < 1e-5 * np.abs(reference).max()
    art = compile_model(path, target="cpu", out_dir=tmp_path, name="a8", act_bits=8)
    if dot_isa(get_target("cpu").tvm()) is None:
        assert art.int8_kernels == 0  # no byte dot product here: the float kernel stays
        return
    assert art.act_bits == 8 and art.int8_kernels == 1
    got = TvmExecutor(art.path).run([x])[0]
    assert np.all(np.abs(got - reference) <= activation_rounding_bound(x, w, group) + 1e-5 * np.abs(reference).max())


def test_act_bits_must_be_8_or_32(w4_model, tmp_path):
    with pytest.raises(CompileError, match="act_bits=4"):
        compile_model(w4_model[0], target="cpu", out_dir=tmp_path, act_bits=4)
    assert not list(tmp_path.iterdir())


def test_targets_choose_their_instruction():
    assert {name: dot_isa(get_target(name).tvm()) for name in
            ("x86_64", "x86_64-vnni", "arm64", "arm64-dotprod", "arm64-i8mm", "armv7", "hexagon-v68")} == {
        "x86_64": "avx2", "x86_64-vnni": "avx512vnni", "arm64": None, "arm64-dotprod": "dotprod",
        "arm64-i8mm": "i8mm", "armv7": None, "hexagon-v68": None}
    if "avx512_vnni" in HOST_FLAGS:
        assert dot_isa(get_target("cpu").tvm()) == "avx512vnni"


# (target, disassembler, instruction that must appear, rows): 4 rows the per-row kernels, 16 the
# prefill GEMM (on arm64 sdot by element; smmla on column pairs with i8mm)
SDOT_BY_LANE = r"\bsdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]"
OBJECT_CODE = [("x86_64-vnni", "objdump", r"\bvpdpbusd\b", 4), ("x86_64", "objdump", r"\bvpmaddubsw\b", 4),
               ("arm64-dotprod", "aarch64-linux-gnu-objdump", r"\bsdot\s+v\d+\.4s", 4),
               ("arm64-i8mm", "aarch64-linux-gnu-objdump", r"\bsmmla\s+v\d+\.4s", 4),
               ("arm64-dotprod", "aarch64-linux-gnu-objdump", SDOT_BY_LANE, 16),
               ("arm64-i8mm", "aarch64-linux-gnu-objdump", r"\bsmmla\s+v\d+\.4s", 16)]


@pytest.mark.parametrize("target,disassembler,instruction,rows", OBJECT_CODE)
def test_object_code_uses_the_dot_product(w4_model, tmp_path, target, disassembler, instruction, rows):
    spec = get_target(target)
    missing = [tool for tool in (spec.cross_compiler, disassembler) if tool and shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (Debian package {spec.compiler_package} / binutils)"
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):
            pytest.fail(message)
        pytest.skip(message)
    art = compile_model(w4_model[0], target=target, out_dir=tmp_path, act_bits=8, specialize={"rows": rows})
    assert art.int8_kernels == 1
    listing = subprocess.run([disassembler, "-d", str(art.path)], capture_output=True, text=True, check=True).stdout
    assert re.search(instruction, listing), f"no {instruction} in the {target} artifact"


def test_matches_onnxruntime_accuracy_level_4(w4_model, tmp_path):
    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.ort import ort_session

    path, w, group = w4_model
    if dot_isa(get_target("cpu").tvm()) is None:
        pytest.skip("this host has no byte dot product: act_bits=8 keeps float activations")
    x = np.random.default_rng(5).normal(size=(4, w.shape[1])).astype(np.float32)
    reference = x.astype(np.float64) @ w.T
    ours = TvmExecutor(compile_model(path, target="cpu", out_dir=tmp_path, act_bits=8).path).run([x])[0]
    level4 = ort_session(str(path), accuracy_level=4).run(None, {"x": x})[0]
    scale = np.abs(reference).max()
    int8_error = np.abs(level4 - reference).max()
    assert int8_error > 1e-4 * scale  # onnxruntime did quantize its activations
    assert np.abs(ours - level4).max() <= 0.1 * int8_error


@pytest.mark.device
@uses_arm64_device
@pytest.mark.parametrize("target", ["arm64-dotprod", "arm64-i8mm"])
@pytest.mark.parametrize("m", [3, 1])
def test_arm64_kernels_bit_exact_on_the_device(tmp_path, target, m):
    """sdot (and smmla for pairs of rows, sdot for the odd last one) on the emulated arm64 device:
    the integer parts bit for bit, as on x86 (exact inputs, 3 rows; one row: the kernel whose
    threads claim blocks from each other)."""
    from edgeq.runtime.rpc import RpcExecutor

    state = running_arm64_device()
    if shutil.which(get_target(target).cross_compiler) is None:
        pytest.skip(f"{get_target(target).cross_compiler} not installed")
    rng = np.random.default_rng(11)
    k, n, group = 256, 16, 64
    x, q, scales, zeros = _exact_inputs(rng, m, k, n, 4, group)
    path = tmp_path / "exact.onnx"
    onnx.save(dq_matmul_model(q, scales, zeros.astype(np.int64), group), path)
    art = compile_model(path, target=target, out_dir=tmp_path, act_bits=8, specialize={"rows": 1} if m == 1 else None)
    assert art.int8_kernels == 1
    executor = RpcExecutor(art.path, state.url)
    try:
        got = executor.run([x])[0]
    finally:
        executor.close()
    expected = x.astype(np.int64) @ (q - np.repeat(zeros, group, 1)).astype(np.int64).T
    assert np.array_equal(got, expected.astype(np.float32))


@pytest.mark.device
@uses_arm64_device
@pytest.mark.parametrize("target", ["arm64-dotprod", "arm64-i8mm"])
@pytest.mark.parametrize("bits,group,n", [(4, 32, 48), (8, 32, 64), (4, 256, 36), (4, 64, 38)])
def test_arm64_prefill_gemm_bit_exact_on_the_device(tmp_path, target, bits, group, n):
    """The prefill GEMMs on the emulated arm64 device, rows symbolic: GEMM_MIN_ROWS + 3 rows
    through them and 3 rows through the per-row kernel of the same function. dotprod: the
    column-lane GEMM (``sdot`` by element; register tiles of 2 rows and a leftover one), 16 columns
    per task (48, 64), one group per row with tasks of 4 columns (36), columns short of its
    vectors (38: the per-row kernel). i8mm: ``smmla`` on 2 rows × 2 columns (5 row pairs and an
    odd row), 4 column pairs per task (48, 64) or 1 (36, 38). 8-bit weights as signed bytes
    (shifted by 128). Integer parts bit for bit. A correctness run only: timings under qemu mean
    nothing."""
    from edgeq.runtime.rpc import RpcExecutor

    state = running_arm64_device()
    if shutil.which(get_target(target).cross_compiler) is None:
        pytest.skip(f"{get_target(target).cross_compiler} not installed")
    assert gemm_columns(dot_isa(get_target(target).tvm()), bits, group) == 16
    rng = np.random.default_rng(bits * 1000 + group + n)
    k = 256
    _, q, _, zeros = _exact_inputs(rng, 1, k, n, bits, group)
    path = tmp_path / "exact.onnx"
    onnx.save(dq_matmul_model(q, np.ones((n, k // group), np.float32), zeros.astype(np.int64), group, bits), path)
    art = compile_model(path, target=target, out_dir=tmp_path, act_bits=8)
    assert art.int8_kernels == 1
    executor = RpcExecutor(art.path, state.url)
    try:
        for m in (GEMM_MIN_ROWS + 3, 3):
            x = _exact_inputs(rng, m, k, n, bits, group)[0]
            expected = x.astype(np.int64) @ (q - np.repeat(zeros, group, 1)).astype(np.int64).T
            assert np.array_equal(executor.run([x])[0], expected.astype(np.float32)), f"rows {m}"
    finally:
        executor.close()


def test_cli_act_bits(w4_model, tmp_path, capsys):
    import json

    from edgeq.cli import main

    assert main(["compile", str(w4_model[0]), "--target", "cpu", "--act-bits", "8", "--json", "-o", str(tmp_path)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["act_bits"] == 8
    assert result["int8_kernels"] == (1 if dot_isa(get_target("cpu").tvm()) else 0)
