"""fold_batchnorm: Conv+BN and Gemm+BN fold to one layer with the same outputs (float32, 1e-5 of
the output scale); a Conv whose output also feeds another node keeps its BN."""

from __future__ import annotations

import numpy as np

from edgeq.passes.fold_batchnorm import fold_batchnorm
from _passes_testing import assert_rewrites, model_from_text

RNG = np.random.default_rng(0)
BN = dict(gamma=RNG.uniform(0.5, 2, 4).astype(np.float32), beta=RNG.standard_normal(4).astype(np.float32),
          mean=RNG.standard_normal(4).astype(np.float32), var=RNG.uniform(0.5, 2, 4).astype(np.float32))

CONV_BN = """
g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    y = BatchNormalization <epsilon = 0.001> (c, gamma, beta, mean, var)
}
"""

GEMM_BN = """
g (float[N, 5] x) => (float[N, 4] y) {
    h = Gemm <transB = 1> (x, w, b)
    y = BatchNormalization (h, gamma, beta, mean, var)
}
"""

SHARED = """
g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y, float[N, 4, 6, 6] c) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    y = BatchNormalization (c, gamma, beta, mean, var)
}
"""


def test_conv_bn_folds():
    model = model_from_text(CONV_BN, w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), b=RNG.standard_normal(4).astype(np.float32), **BN)
    assert_rewrites(model, fold_batchnorm, ["Conv"])


def test_gemm_bn_folds():
    model = model_from_text(GEMM_BN, w=RNG.standard_normal((4, 5)).astype(np.float32), b=RNG.standard_normal(4).astype(np.float32), **BN)
    assert_rewrites(model, fold_batchnorm, ["Gemm"])


def test_conv_with_second_user_is_left_alone():
    model = model_from_text(SHARED, w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), b=np.zeros(4, np.float32), **BN)
    assert_rewrites(model, fold_batchnorm, ["Conv", "BatchNormalization"], tolerance=0)
