"""The whole pipeline on the built-in digits CNN: quantize (W8A8), export ONNX, run it on
onnxruntime, compile it with TVM for this host, and compare both with the PyTorch reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import edgeq
from edgeq.models.digits_cnn import accuracy, digits_data, load_digits_cnn
from edgeq.runtime import OrtExecutor, TorchExecutor, TvmExecutor, validate

CALIB_SAMPLES = 512


@dataclass
class DemoReport:
    out_dir: str
    recipe: str
    float_top1: float
    quant_top1: float
    ort_max_abs: float
    ort_top1_agreement: float
    tvm_max_abs: float
    tvm_top1_agreement: float
    onnx_bytes: int
    compile_seconds: float
    tvm_target: str
    onnx_path: str
    artifact_path: str

    def to_dict(self) -> dict:
        return asdict(self)


def run_demo(out_dir: str | Path = "edgeq-demo", recipe: str = "w8a8", target: str = "cpu") -> DemoReport:
    from edgeq._io import check_output_dir
    from edgeq.recipes import resolve_recipe
    from edgeq.targets.registry import get_target

    resolve_recipe(recipe)  # bad arguments fail before the work, and before the folder exists
    get_target(target).require_compiler()
    out = check_output_dir(out_dir)
    data = digits_data()
    model = load_digits_cnn()
    qmodel = edgeq.quantize(model, recipe, calib=data.x_train[:CALIB_SAMPLES])
    onnx_path = edgeq.export(qmodel, data.x_test[:1], out / f"digits_cnn.{recipe}.onnx")
    artifact = edgeq.compile(onnx_path, target=target, out_dir=out)
    x = data.x_test.numpy()
    ort_ex, tvm_ex = OrtExecutor(onnx_path), TvmExecutor(artifact.path)
    ort_n, tvm_n = validate(TorchExecutor(qmodel), [ort_ex, tvm_ex], [x])
    with torch.no_grad():
        float_top1 = accuracy(model(data.x_test), data.y_test)
        quant_top1 = accuracy(qmodel(data.x_test), data.y_test)
    return DemoReport(
        out_dir=str(out), recipe=recipe, float_top1=float_top1, quant_top1=quant_top1,
        ort_max_abs=ort_n.max_abs, ort_top1_agreement=ort_n.top1_agreement,
        tvm_max_abs=tvm_n.max_abs, tvm_top1_agreement=tvm_n.top1_agreement,
        onnx_bytes=Path(onnx_path).stat().st_size, compile_seconds=artifact.compile_seconds,
        tvm_target=artifact.target, onnx_path=str(onnx_path), artifact_path=str(artifact.path),
    )


def demo_table(r: DemoReport) -> str:
    from edgeq._table import format_table

    rows = [
        ["float32 top-1 (digits test, 450 images)", f"{r.float_top1:.2%}"],
        [f"{r.recipe} top-1 (PyTorch reference)", f"{r.quant_top1:.2%}"],
        ["onnxruntime max abs error vs PyTorch", f"{r.ort_max_abs:.3g}"],
        ["onnxruntime top-1 agreement", f"{r.ort_top1_agreement:.2%}"],
        [f"TVM ({r.tvm_target}) max abs error vs PyTorch", f"{r.tvm_max_abs:.3g}"],
        [f"TVM ({r.tvm_target}) top-1 agreement", f"{r.tvm_top1_agreement:.2%}"],
        ["ONNX file size", f"{r.onnx_bytes / 1024:.1f} KiB"],
        ["TVM compile time", f"{r.compile_seconds:.2f} s"],
    ]
    return format_table(["built-in digits CNN", "value"], rows)
