"""``edgeq.compile``: an ONNX file to a TVM (Relax) artifact for a named target.

The artifact is a shared library (or object archive) plus ``<name>.json`` that records the
target, the inputs and outputs, and the compile time, so that executors can call it without the
ONNX file. Both are written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from edgeq._io import atomic_path, atomic_write_text
from edgeq.errors import CompileError, ModelFileError
from edgeq.targets.registry import get_target


@dataclass
class Artifact:
    path: Path
    target: str
    compile_seconds: float
    size_bytes: int
    inputs: list[dict]
    outputs: list[dict]
    tvm_target: dict | None = None

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        meta = path.with_suffix(".json")
        if not path.exists():
            raise ModelFileError(f"{path}: no such artifact")
        if not meta.exists():
            raise ModelFileError(f"{meta}: the artifact's metadata file is missing")
        data = json.loads(meta.read_text())
        return cls(path=path, **{k: v for k, v in data.items() if k != "path"})


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file; a ModelFileError naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelFileError(f"{path}: ONNX model has an empty graph")
    return model


def _value_infos(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
    return out


def compile(onnx_path: str | Path, target: str = "cpu", out_dir: str | Path = ".", name: str | None = None) -> Artifact:
    """Compile ``onnx_path`` for ``target`` into ``out_dir``; returns the Artifact."""
    import tvm

    from edgeq.targets.importer import import_onnx

    spec = get_target(target)
    compiler = spec.require_compiler()
    model = load_onnx(onnx_path)
    name = name or Path(onnx_path).stem
    out = Path(out_dir) / f"{name}.{spec.name}.{spec.artifact}"
    start = time.perf_counter()
    try:
        mod = import_onnx(model)
    except Exception as exc:
        raise CompileError(f"{onnx_path}: TVM's ONNX import failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    try:
        with spec.tvm():
            executable = tvm.compile(mod, target=spec.tvm())
    except Exception as exc:
        raise CompileError(f"{onnx_path}: TVM build for {spec.name} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    with atomic_path(out, keep_suffix=True) as tmp:
        if compiler:
            from tvm.support import cc

            executable.export_library(str(tmp), fcompile=cc.cross_compiler(compiler))
        else:
            executable.export_library(str(tmp))
    seconds = time.perf_counter() - start
    artifact = Artifact(
        path=out, target=spec.name, compile_seconds=seconds, size_bytes=out.stat().st_size,
        inputs=_value_infos(model.graph.input), outputs=_value_infos(model.graph.output),
        tvm_target=spec.tvm_target,
    )
    meta = {k: v for k, v in asdict(artifact).items() if k != "path"}
    atomic_write_text(artifact.meta_path, json.dumps(meta, indent=2, default=str))
    return artifact
