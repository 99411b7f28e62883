"""The CPU schedule rules (targets/schedules/) as TVM ScheduleRules: a rule returns a Schedule for
a function it fits and None for one it does not (never raises); the packed-linear rule finds the
kernel by its buffers, and its schedule computes ``X @ dequant(q).T`` (numpy reference, float32
sums in another order: within 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from edgeq.targets import get_target
from edgeq.targets.lower_lowbit import packed_linear_te
from edgeq.targets.schedules.elementwise import Elementwise
from edgeq.targets.schedules.matmul import Matmul
from edgeq.targets.schedules.packed_linear import PackedLinear, match_packed_linear

M, K, N, GROUP = 1, 64, 32, 32


def _packed_func():
    x = te.placeholder((M, K), "float32", "x")
    q = te.placeholder((N, K // 2), "uint8", "q")
    s = te.placeholder((N, K // GROUP), "float32", "s")
    z = te.placeholder((N, K // GROUP), "float32", "z")
    return te.create_prim_func([x, q, s, z, packed_linear_te(x, q, s, z, bits=4, group_size=GROUP)])


def _matmul_func():
    a = te.placeholder((8, 64), "float32", "a")
    b = te.placeholder((64, 32), "float32", "b")
    k = te.reduce_axis((0, 64), "k")
    return te.create_prim_func([a, b, te.compute((8, 32), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k))])


def _add_func():
    a = te.placeholder((8, 64), "float32", "a")
    return te.create_prim_func([a, te.compute((8, 64), lambda i, j: a[i, j] + 1.0)])


@pytest.fixture(scope="module")
def target():
    return get_target("x86_64").tvm()


def test_packed_linear_is_found_by_its_buffers():
    func = _packed_func()
    shape = match_packed_linear(s_tir.Schedule(func), func)
    assert (shape.bits, shape.group, shape.rows, shape.static) == (4, GROUP, M, True)
    assert match_packed_linear(s_tir.Schedule(_matmul_func()), _matmul_func()) is None


@pytest.mark.parametrize("rule, fits, other", [
    (PackedLinear(), _packed_func, _matmul_func),
    (Matmul(), _matmul_func, _add_func),
    (Elementwise(), _add_func, _matmul_func),
])
def test_a_rule_schedules_what_it_fits_and_returns_none_otherwise(target, rule, fits, other):
    assert isinstance(rule.apply(fits(), target, False), s_tir.Schedule)
    assert rule.apply(other(), target, False) is None


def test_packed_linear_schedule_matches_numpy():
    host = get_target("cpu").tvm()
    sch = PackedLinear().apply(_packed_func(), host, False)
    lib = tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), target=host)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(M, K)).astype(np.float32)
    values = rng.integers(0, 16, (N, K)).astype(np.uint8)
    packed = (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)  # value 2b in the low nibble
    scales = rng.uniform(0.01, 0.1, (N, K // GROUP)).astype(np.float32)
    zeros = rng.integers(0, 16, (N, K // GROUP)).astype(np.float32)
    weight = (values - np.repeat(zeros, GROUP, axis=1)) * np.repeat(scales, GROUP, axis=1)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (x, packed, scales, zeros)], y)
    np.testing.assert_allclose(y.numpy(), x @ weight.T, rtol=1e-5, atol=1e-5)
