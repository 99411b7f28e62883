"""edgeq.DyadicRequantize: numpy reference == onnxruntime (opset 21 and 28 bodies) == TVM, bit for
bit, on random int32 accumulators including negatives and exact ties; and the multiplier from
frexp is the closest 31-bit dyadic number."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.opset.dyadic import dyadic_multiplier, dyadic_requantize_reference
from edgeq.passes._onnx import attach_edgeq_functions
from edgeq.runtime.ort import ort_session

CHANNELS = 8


def _model(opset: int, lo: int, hi: int, multiplier, shift, zero_point) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(multiplier.reshape(1, CHANNELS, 1), "m"),
        numpy_helper.from_array(shift.reshape(1, CHANNELS, 1), "s"),
        numpy_helper.from_array(np.array(zero_point, np.int32), "zp"),
    ]
    node = helper.make_node("DyadicRequantize", ["x", "m", "s", "zp"], ["y"], domain="edgeq", lo=lo, hi=hi)
    graph = helper.make_graph(
        [node], "dyadic", [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", CHANNELS, "length"])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", CHANNELS, "length"])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    attach_edgeq_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    shift = rng.integers(1, 24, CHANNELS).astype(np.int32)
    multiplier = rng.integers(2**30, 2**31 - 1, CHANNELS).astype(np.int32)
    multiplier[0] = 1  # with m = 1, x = k*2^s +/- 2^(s-1) are exact ties
    x = rng.integers(-(2**31), 2**31 - 1, (16, CHANNELS, 64), dtype=np.int64).astype(np.int32)
    ties = (np.arange(-32, 32) * 2 + 1) * (1 << (int(shift[0]) - 1))
    x[0, 0, :] = ties
    x[1, :, :4] = [-(2**31), 2**31 - 1, -1, 0]
    return x, multiplier, shift


def test_reference_rounds_half_up_with_floor_shift():
    x = np.array([-3, -2, -1, 1, 2, 3, -5, 5], np.int32)  # x / 2: ties at odd x
    y = dyadic_requantize_reference(x, 1, 1, 0)
    np.testing.assert_array_equal(y, [-1, -1, 0, 1, 1, 2, -2, 3])


@pytest.mark.parametrize("opset", [21, 28])
def test_onnxruntime_matches_reference(case, opset):
    x, m, s = case
    lo, hi = -100_000, 2_000_000
    model = _model(opset, lo, hi, m, s, 7)
    got = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
    want = dyadic_requantize_reference(x, m.reshape(1, -1, 1), s.reshape(1, -1, 1), 7, lo, hi)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert (want == lo).any() and (want == hi).any() and ((want > lo) & (want < hi)).mean() > 0.1


def test_tvm_matches_reference(case, tmp_path):
    import tvm
    from tvm import relax

    from edgeq.targets.importer import import_onnx

    x, m, s = case
    lo, hi = -(2**31), 2**31 - 1
    model = _model(21, lo, hi, m, s, -3)
    mod = import_onnx(model)
    script = mod.script()
    assert ">>" in script and "float" not in script, "the lowering must stay in integers (one TE kernel)"
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = dyadic_requantize_reference(x, m.reshape(1, -1, 1), s.reshape(1, -1, 1), -3, lo, hi)
    np.testing.assert_array_equal(got, want)


def test_multiplier_is_closest_dyadic():
    rng = np.random.default_rng(1)
    scales = np.concatenate([rng.uniform(1e-6, 4.0, 200), [0.5, 1.0, 1 - 2**-40, 2.0**-20]])
    b, c = dyadic_multiplier(scales)
    assert b.dtype == np.int32 and c.dtype == np.int32
    assert ((b >= 2**30) & (b < 2**31)).all()
    approx = b.astype(np.float64) / 2.0 ** c.astype(np.float64)
    assert np.all(np.abs(approx - scales) <= 2.0 ** -(c.astype(np.float64) + 1) * 1.0000001)
    # 1 - 2^-40 rounds to 2^31 and is renormalised to b = 2^30, c = 30
    assert (b[-2], c[-2]) == (2**30, 30)
