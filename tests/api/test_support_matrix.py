"""The support matrix (issue #17): every architecture x preset family of ``tools/support_matrix.py``
runs (random-init tiny configs) and ends as expected below: ``ok`` (every executor within tolerance
of the quantized PyTorch model, which is within its bound of the float model) or ``refused``
(an EdgeqError from ``edgeq.quantize`` before any work). A traceback, a missed tolerance or an
unexpected refusal fails. docs/SUPPORT.md must show the outcome each cell gives here (regenerate
it with ``python tools/support_matrix.py``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "tools" / "support_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
sys.modules["support_matrix"] = matrix
_spec.loader.exec_module(matrix)

# Cells refused by design, with words the EdgeqError's reason must hold. Every other cell is ok.
_NOT_A_DECODER = "needs the decoder's layout"  # Hadamard rotation needs a decoder's facts (edgeq.quant.architectures)
REFUSED = {(a, "hadamard"): _NOT_A_DECODER for a in ("bert", "roberta", "minilm", "vit", "resnet", "mobilenet-v2", "mobilenet-v3")}
# Cells that fail today, with what is known; once fixed, remove them here (the test then holds
# them to their expected outcome).
BEING_FIXED: dict[tuple[str, str], str] = {}

PAIRS = matrix.cells_for()


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Every cell, run once per test session by a process per core (up to 4), each taking the next
    cell when done with one: the cells are single-threaded export and compile work."""
    work = tmp_path_factory.mktemp("matrix")
    workers = max(1, min(4, os.cpu_count() or 1))
    done = {(c.arch, c.family): c for c in matrix.run_matrix(PAIRS, work, progress=False, workers=workers)}
    return lambda arch, family: done[arch, family]


@pytest.mark.parametrize("arch, family", PAIRS, ids=[f"{a}-{f}" for a, f in PAIRS])
def test_cell(cells, arch, family):
    cell = cells(arch, family)
    if (arch, family) in BEING_FIXED and cell.outcome == "failed":
        pytest.xfail(f"{BEING_FIXED[arch, family]}: {cell.failed_stage}: {cell.reason}")
    expected = "refused" if (arch, family) in REFUSED else "ok"
    assert cell.outcome == expected, f"{arch} x {family}: {cell.outcome} at {cell.failed_stage}: {cell.reason}"
    if expected == "refused":
        assert REFUSED[arch, family] in cell.reason
    else:  # every stage ran (arm64 skips only where the cross compiler is missing, which CI has)
        assert set(cell.stages) == set(matrix.STAGES) and cell.error_vs_quantized["onnxruntime"] <= matrix.TOLERANCE["max_rel"]
        assert cell.error_vs_quantized["tvm-cpu"] <= matrix.TOLERANCE["max_rel"]
        if family == "dyadic":  # integer-only: every executor gives the PyTorch integer reference's values
            assert cell.error_vs_quantized == {"onnxruntime": 0.0, "tvm-cpu": 0.0}


@pytest.mark.parametrize("arch", list(matrix.ARCHS))
def test_support_doc_shows_what_the_cells_give(cells, arch):
    families = [f for f in matrix.FAMILIES if any(f == g for _, g in PAIRS)]
    row = matrix.table_row(arch, [cells(a, f) for a, f in PAIRS if a == arch], families)
    assert row in matrix.DOC.read_text().splitlines(), f"docs/SUPPORT.md is stale: run python tools/support_matrix.py ({row})"


@pytest.mark.parametrize("preset, layer", [("w4g32-rtn", "0"), ("w4-rtn", "0")])
def test_unfitting_layers_are_refused_without_skip(preset, layer):
    """The matrix keeps CNN stems and 3x3 depthwise convs float with ``skip=`` (as a user does);
    without it the weight-only presets refuse the model before any work, naming the layer."""
    import edgeq

    with pytest.raises(edgeq.errors.QuantizationError, match=f"^{layer}: "):
        edgeq.quantize(matrix.ARCHS["mobilenet-v2"].make(), preset)
    skip_stem = dataclasses.replace(edgeq.PRESETS[preset], skip=("0",))
    with pytest.raises(edgeq.errors.QuantizationError, match=r"^3\.depthwise\.0: "):
        edgeq.quantize(matrix.ARCHS["mobilenet-v2"].make(), skip_stem)
