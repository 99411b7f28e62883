"""Refactoring the schedules keeps the scheduled TIR: a representative set of models (every kernel
kind edgeq schedules) is lowered through ``targets.compile.default_pipeline`` and each PrimFunc's
``tvm_ffi.structural_hash`` must equal the one in ``tir_baseline.json``, recorded before the
schedules of issue 16 became TVM schedule rules. (Relax's shape functions are left out: they
schedule nothing and their statement order varies from run to run; so is the
``tirx.is_scheduled`` marker, see ``_unmarked``.)

Kernel kinds covered: packed W4 linears grouped and per-channel (lane kernel), W3 (the rfactor
schedule), a prefill GEMM (16 rows, specialized), ``act_bits=8`` on arm64-dotprod and x86_64-vnni
(symbolic batch: float kernels; batch 1: the int8-activation kernels; one token: the one-row
kernel), a W8 embedding, a 4-bit tied lm_head, the digits CNN in float
(conv, matmul, rows, reductions, elementwise) and integer-only. Named targets (not the host's
``cpu``), so the hashes do not depend on the machine.

A change meant to alter a schedule updates the baseline: ``python tests/targets/test_tir_invariance.py``
rewrites it (and prints which functions changed), on an AVX-512 host: the integer-only digits
model's dyadic constants come from its calibrated activation scales, which PyTorch's float
convolutions round differently without AVX-512 (``tests/export/test_export_invariance.py``), so on
such a host that case's requantizing kernel has the hash in ``WITHOUT_AVX512``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, also when run as a script
from _tiny_models import one_thread, tiny_llama  # noqa: E402

BASELINE = Path(__file__).with_name("tir_baseline.json")
# the functions whose hash differs on a host without AVX-512 (recorded on an AVX2-only AMD EPYC host)
WITHOUT_AVX512 = {"digits-w8a8-int-x86_64": {"fused_matmul_add4_dyadic_requantize4_cast8_dequantize": "e35a6222ea3b61a5"}}


def _exports(out: Path) -> dict[str, Path]:
    """The ONNX files, by name."""
    import edgeq
    from edgeq.models import digits_data, load_digits_cnn
    from edgeq.passes.integerize import export_integer
    from edgeq.quant.embedding import quantize_embeddings
    from edgeq.quant.weight_only_recipes import RTNRecipe

    def llama():
        return tiny_llama(num_hidden_layers=1)

    files = {}
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    for name, recipe in (("w4g32", RTNRecipe(bits=4, group_size=32, skip=("lm_head",))),
                         ("w4pc", RTNRecipe(bits=4, group_size=None, skip=("lm_head",))),
                         ("w3g32", RTNRecipe(bits=3, group_size=32, skip=("lm_head",)))):
        files[f"llama-{name}"] = edgeq.export(edgeq.quantize(llama(), recipe), ids, out / f"{name}.onnx")
    emb8 = edgeq.quantize(llama(), RTNRecipe(bits=4, group_size=32, skip=("lm_head",)))
    quantize_embeddings(emb8, 8, 32)
    files["llama-w4g32-embedding8-tied"] = edgeq.export(emb8, ids, out / "emb8.onnx")
    tied4 = edgeq.quantize(llama(), RTNRecipe(bits=4, group_size=32, skip=("lm_head",)))
    quantize_embeddings(tied4, 4, 32)
    files["llama-w4g32-embedding4-tied"] = edgeq.export(tied4, ids, out / "emb4.onnx")

    data, model = digits_data(), load_digits_cnn()
    example = data.x_test[:1]
    files["digits-float"] = edgeq.export(model, example, out / "digits.onnx")
    dyadic = edgeq.quantize(model, "w8a8-dyadic", calib=data.x_train[:64])
    files["digits-w8a8-int"] = export_integer(dyadic, example, out / "digits_int.onnx")
    return files


# (case, ONNX file, target, act_bits, specialize)
CASES = (
    ("llama-w4g32-x86_64", "llama-w4g32", "x86_64", 32, None),
    ("llama-w4g32-arm64", "llama-w4g32", "arm64", 32, None),
    ("llama-w4pc-x86_64", "llama-w4pc", "x86_64", 32, None),
    ("llama-w3g32-x86_64", "llama-w3g32", "x86_64", 32, None),
    ("llama-w4g32-seq16-x86_64", "llama-w4g32", "x86_64", 32, {"seq": 16}),
    ("llama-w4g32-act8-arm64-dotprod", "llama-w4g32", "arm64-dotprod", 8, None),
    ("llama-w4g32-act8-x86_64-vnni", "llama-w4g32", "x86_64-vnni", 8, None),
    # batch 1, seq symbolic: the int8-activation kernels themselves (one-row kernel and prefill
    # GEMM picked at run time; sdot on arm64), which symbolic batches leave on the float schedule
    ("llama-w4g32-act8-batch1-arm64-dotprod", "llama-w4g32", "arm64-dotprod", 8, {"batch": 1}),
    ("llama-w4g32-act8-batch1-x86_64-vnni", "llama-w4g32", "x86_64-vnni", 8, {"batch": 1}),
    # one token (decode): the one-row kernel whose threads claim weight row blocks from each other
    ("llama-w4g32-act8-token1-x86_64-vnni", "llama-w4g32", "x86_64-vnni", 8, {"batch": 1, "seq": 1}),
    ("llama-w4g32-embedding8-tied-x86_64", "llama-w4g32-embedding8-tied", "x86_64", 32, None),
    ("llama-w4g32-embedding4-tied-x86_64", "llama-w4g32-embedding4-tied", "x86_64", 32, None),
    ("digits-float-x86_64", "digits-float", "x86_64", 32, None),
    ("digits-float-arm64", "digits-float", "arm64", 32, None),
    ("digits-w8a8-int-x86_64", "digits-w8a8-int", "x86_64", 32, None),
)


def scheduled_tir(onnx_path: Path, target: str, act_bits: int, specialize) -> dict[str, str]:
    """Each PrimFunc of the lowered module: its name -> structural hash (hex)."""
    import tvm
    import tvm_ffi

    from edgeq.targets.compile import default_pipeline, import_model
    from edgeq.targets.registry import get_target

    spec = get_target(target)
    lowered, _ = default_pipeline(import_model(onnx_path, spec, specialize), spec, act_bits=act_bits)
    return {gv.name_hint: f"{tvm_ffi.structural_hash(_unmarked(func)) & 0xFFFFFFFFFFFFFFFF:016x}"
            for gv, func in sorted(lowered.functions.items(), key=lambda item: item[0].name_hint)
            if isinstance(func, tvm.tirx.PrimFunc) and not _is_shape_function(func)}


def _unmarked(func):
    """Without the ``tirx.is_scheduled`` marker: TVM's ApplyDefaultSchedule sets it on every
    function a rule schedules, where edgeq's old loop left the rfactor-scheduled packed linears
    (symbolic batch, 3 bits) unmarked; the marker changes no statement."""
    return func.without_attr("tirx.is_scheduled") if func.attrs and "tirx.is_scheduled" in func.attrs else func


def _is_shape_function(func) -> bool:
    """Relax's host-side shape arithmetic: no kernel, and its statements come in hash-map order
    (they differ from run to run)."""
    return bool(func.attrs) and "tirx.is_host_func" in func.attrs


def current_tir(out: Path) -> dict[str, dict[str, str]]:
    with one_thread():
        files = _exports(out)
    return {case: scheduled_tir(files[file], target, act_bits, specialize)
            for case, file, target, act_bits, specialize in CASES}


@pytest.fixture(scope="module")
def tir(tmp_path_factory):
    return current_tir(tmp_path_factory.mktemp("tir"))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_scheduled_tir_is_structurally_equal(tir, case):
    from edgeq.targets.registry import host_cpu_flags

    expected = json.loads(BASELINE.read_text())[case]
    if "avx512f" not in host_cpu_flags():
        expected = {**expected, **WITHOUT_AVX512.get(case, {})}
    changed = sorted(name for name in expected.keys() | tir[case].keys() if expected.get(name) != tir[case].get(name))
    assert not changed, f"{case}: the scheduled TIR of {changed} changed"


def test_every_case_has_a_baseline():
    assert sorted(json.loads(BASELINE.read_text())) == sorted(c[0] for c in CASES)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        current = current_tir(Path(tmp))
    old = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    for case, funcs in current.items():
        for name, digest in funcs.items():
            if old.get(case, {}).get(name) != digest:
                print(f"{case}: {name} changed")
    BASELINE.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
