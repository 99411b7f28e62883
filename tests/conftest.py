"""Shared fixtures: the built-in model, its data, and the W8A8 pipeline artifacts (built once).

Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) each test file runs whole on one
worker, so its module-scoped fixtures are built once; files holding a test marked
``uses_arm64_device`` (tests/_devices.py) form one group, run one test at a time on one worker, because
the emulated arm64 device serves one RPC session at a time (and one test stops its server). Each
worker runs PyTorch and TVM on its share of the cores: two workers with a pool of every core
each would spin against each other."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from _devices import ARM64_DEVICE


def _share_cores_between_workers() -> None:
    """Give an xdist worker's PyTorch and TVM thread pools cores / workers threads (unless the
    user sized them); set before ``import edgeq``, which sizes TVM's pool otherwise."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "TVM_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    from edgeq.runtime.threads import physical_cores

    threads = max(1, physical_cores() // workers)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_cores_between_workers()

import edgeq  # noqa: E402  (after the thread pools are sized)
from edgeq.models import digits_data, load_digits_cnn  # noqa: E402


@functools.cache
def _uses_arm64_device(path: Path) -> bool:
    """Whether the test file holds a test marked ``uses_arm64_device``."""
    return "uses_arm64_device" in path.read_text()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with files as groups: every test of a file on one worker, and every
    file that uses the arm64 device in one group. (pytest 9.2 ignores the nodeid suffix by which
    xdist 3.8 groups ``xdist_group`` marks, so the scope is decided here, from the test's file.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return ARM64_DEVICE if _uses_arm64_device(config.rootpath / path) else path

    return FileGroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """On xdist workers (``--dist loadgroup``): the longest groups first, the device group, then
    files with a ``slow`` test, so no long file starts last while the other worker idles
    (``make test`` passes ``--no-loadscope-reorder``, which keeps this order)."""
    if not getattr(config.option, "loadgroup", False):  # what xdist sets on its workers for --dist loadgroup
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (not _uses_arm64_device(item.path), item.path not in slow))


@pytest.fixture(scope="session")
def digits():
    return digits_data()


@pytest.fixture(scope="session")
def digits_model():
    return load_digits_cnn()


@pytest.fixture(scope="session")
def w8a8_pipeline(tmp_path_factory, digits, digits_model):
    """(quantized model, ONNX path, compiled host-CPU artifact) for the digits CNN at W8A8."""
    out = tmp_path_factory.mktemp("w8a8")
    qmodel = edgeq.quantize(digits_model, "w8a8", calib=digits.x_train[:512])
    onnx_path = edgeq.export(qmodel, digits.x_test[:1], out / "digits.onnx")
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=out)
    return qmodel, onnx_path, artifact


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M in float32; loaded once (~20 s)."""
    from edgeq.models.smollm2 import load_smollm2

    return load_smollm2()
