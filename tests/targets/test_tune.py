"""edgeq tune: meta_schedule over a tiny model's kernels within a small budget writes a database
that compile(tuning_db=...) uses; the tuned artifact computes what the untuned one does.

The search runs in a fresh interpreter, as ``edgeq tune`` does: meta_schedule imports ~500
TVMScript tensor intrinsics, and TVMScript's parser calls ``inspect.stack()`` for each, whose
frame lookups scan ``sys.modules``; in a pytest worker that has imported torch, transformers
and every test module, that import alone took minutes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import onnx
import pytest

import edgeq
from edgeq.errors import CompileError
from edgeq.runtime.executors import TvmExecutor
from edgeq.targets.tune import tune
from test_cpu_pipeline import _mlp_model

pytestmark = pytest.mark.slow
TOL = 1e-5  # float32 sums in another order


def test_tuned_artifact_matches_untuned(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp_model(16, 64, 64, transposed=False), path)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        result = fresh.submit(tune, path, tmp_path / "db", budget_s=10, trials_per_kernel=4, progress=False).result()
    assert result.tuned and set(result.tuned) <= set(result.kernels)
    assert set(result.kept_default) <= set(result.tuned)
    # tuned in a hidden copy beside the database, moved in whole: no temporary is left
    assert (tmp_path / "db" / "database_tuning_record.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".edgeq-tmp-" in p.name]
    tuned = edgeq.compile(path, out_dir=tmp_path, name="tuned", tuning_db=tmp_path / "db")
    untuned = edgeq.compile(path, out_dir=tmp_path, name="untuned")
    # a kernel whose tuned schedule lost to the default keeps the default
    assert (tuned.tuned_kernels >= 1) == (len(result.kept_default) < len(result.tuned))
    assert untuned.tuned_kernels is None
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    got, expect = TvmExecutor(tuned.path).run([x])[0], TvmExecutor(untuned.path).run([x])[0]
    assert np.abs(got - expect).max() <= TOL * np.abs(expect).max()


def test_missing_database_names_the_folder(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp_model(4, 16, 16, transposed=False), path)
    with pytest.raises(CompileError, match="not a tuning database"):
        edgeq.compile(path, out_dir=tmp_path, tuning_db=tmp_path / "nowhere")
    assert not list(tmp_path.glob("mlp.cpu*"))
