"""Shared fixtures: the built-in model, its data, and the W8A8 pipeline artifacts (built once).

Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) each test file runs whole on one
worker, so its module-scoped fixtures are built once; files holding a test marked
``uses_arm64_device`` (tests/_devices.py) run whole in that group, one test at a time on one worker, because
the emulated arm64 device serves one RPC session at a time (and one test stops its server). Each
worker runs PyTorch and TVM on its share of the cores: two workers with a pool of every core
each would spin against each other."""

from __future__ import annotations

import os

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


def _group_of_files(items) -> dict:
    """Each file's xdist group: the one a test of it names, else the file itself (basenames are unique)."""
    groups = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None:
            groups.setdefault(item.path, mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    return {item.path: groups.get(item.path, item.path.stem) for item in items}


def pytest_collection_modifyitems(config, items):
    """With ``--dist loadgroup``: every test in its file's group, and the longest groups first (the
    device group, then files with a ``slow`` test), so no long file starts last while the other
    worker idles (``make test`` passes ``--no-loadscope-reorder``, which keeps this order)."""
    if not getattr(config.option, "loadgroup", False):  # what xdist sets on its workers for --dist loadgroup
        return
    group_of = _group_of_files(items)
    slow = {group_of[item.path] for item in items if item.get_closest_marker("slow")}
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group_of[item.path]))
    items.sort(key=lambda item: (group_of[item.path] != ARM64_DEVICE, group_of[item.path] not in slow))


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
