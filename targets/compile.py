"""``edgeq.compile``: an ONNX file to a TVM (Relax) artifact for a named target.

The artifact is a shared library (or object archive) plus ``<name>.json`` that records the
target, the inputs and outputs, and the compile time, so that executors can call it without the
ONNX file. Both are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeq._io import atomic_path, atomic_write_text, check_output_dir
from edgeq.errors import CompileError, EdgeqError, ModelFileError, first_line
from edgeq.external_data import external_data_files
from edgeq.targets.int8_lowbit import ACT_BITS
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
    weight_bytes: int | None = None  # bytes of the constants the artifact holds
    onnx_weight_bytes: int | None = None  # bytes of the ONNX file's initializers (packed)
    device_code: str | None = None  # GPU targets: the PTX for the named architecture (the .json names the file beside the library)
    specialized: dict | None = None  # input dimensions fixed at compile time, by name
    tuned_kernels: int | None = None  # kernels whose schedule came from a tuning database (edgeq tune)
    generation: dict | None = None  # KV-cache LMs: prefill/decode functions, cache geometry, max context
    act_bits: int = 32  # 8: packed linears quantize their activations to int8 (integer dot products)
    int8_kernels: int | None = None  # with act_bits=8: the packed linears that got an integer kernel

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        """The artifact at ``path`` with its ``.json``, checked against the fields of this class
        (a ModelFileError naming the file and the field that is missing, unknown or ill-typed)."""
        path = Path(path)
        meta = path.with_suffix(".json")
        if not path.is_file():
            raise ModelFileError(f"{path}: no such artifact")
        if not meta.is_file():
            raise ModelFileError(f"{meta}: the artifact's metadata file is missing")
        try:
            data = json.loads(meta.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{meta}: not JSON ({exc})") from None
        _check_metadata(meta, data)
        if data.get("device_code"):
            data["device_code"] = str(path.parent / data["device_code"])
        return cls(path=path, **data)


_TENSOR_FIELDS = {"name": str, "dtype": str, "shape": list}


def _check_metadata(meta: Path, data) -> None:
    """The schema of an artifact's ``.json`` is the Artifact dataclass: fields without a default
    are required, the annotations give the types, nothing else is allowed."""
    if not isinstance(data, dict):
        raise ModelFileError(f"{meta}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(Artifact)
    fields = {f.name: f for f in dataclasses.fields(Artifact) if f.name != "path"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ModelFileError(f"{meta}: unknown field {unknown[0]!r}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise ModelFileError(f"{meta}: missing field {name!r}")
            continue
        if not _has_type(data[name], hints[name]):
            raise ModelFileError(f"{meta}: field {name!r} is {data[name]!r}, expected {hints[name]}")
    for name in ("inputs", "outputs"):
        for i, tensor in enumerate(data[name]):
            ok = (isinstance(tensor, dict) and set(tensor) == set(_TENSOR_FIELDS)
                  and all(isinstance(tensor[k], t) for k, t in _TENSOR_FIELDS.items())
                  and all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                          for d in tensor["shape"]))
            if ok:
                try:
                    np.dtype(tensor["dtype"])
                except TypeError:
                    ok = False
            if not ok:
                raise ModelFileError(f"{meta}: field {name!r}[{i}] is {tensor!r}, expected "
                                     "{name: str, dtype: a numpy dtype, shape: [int or str, ...]}")


def _has_type(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def load_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; a ModelFileError naming the file when it is missing or corrupt."""
    from edgeq.model_spec import names_a_pytorch_model

    path = Path(path)
    if names_a_pytorch_model(str(path)):
        raise ModelFileError(f"{path}: a PyTorch model, not an ONNX file; export it first: edgeq export {path} -o model.onnx")
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    files = external_data_files(model, path)  # every location inside the model's folder, before any is read
    if load_external_data and files:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            first = first_line(exc)
            raise ModelFileError(f"{path}: its external data cannot be read: {first}") from None
    if not model.graph.node:
        raise ModelFileError(f"{path}: ONNX model has an empty graph")
    from edgeq.model_info import check_tensor_data

    check_tensor_data(model, path)
    return model


def _value_infos(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
    return out


def onnx_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers as stored (2/4-bit tensors packed)."""
    total = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data") or t.data_location == onnx.TensorProto.EXTERNAL:
            ext = {e.key: e.value for e in t.external_data}
            total += int(ext["length"]) if "length" in ext else len(t.raw_data)
        else:
            total += onnx.numpy_helper.to_array(t).nbytes
    return total


def constant_bytes(mod) -> int:
    """Bytes of the tensor constants in a (lowered) Relax module: what the artifact embeds."""
    import tvm
    from tvm import relax

    sizes: dict[int, int] = {}  # by data pointer: a constant used twice is stored once

    def visit(expr):
        if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
            value = expr.value
            sizes[value.data_ptr()] = int(np.prod(value.shape, dtype=np.int64)) * np.dtype(str(value.dtype)).itemsize

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(sizes.values())


def default_pipeline(mod, spec, defaults: bool = True, tuning_db=None, act_bits: int = 32, generation: bool = False):
    """Relax's default pipeline (with a vectorizable exp for softmax and sigmoid on CPU), then
    edgeq's schedule rules (``cpu_pipeline``): the packed low-bit kernels, tuned schedules from
    ``tuning_db`` where it has them, and (``defaults``) the default CPU rules for the rest. ``act_bits=8``: the packed linears' int8-activation kernels where the
    target has a byte dot product. ``generation``: a generation module, whose VM code is made leaner
    (``cpu_pipeline.relax_pipeline``). Returns (lowered module, number of kernels taken from the database)."""
    from edgeq.targets import cpu_pipeline

    target = spec.tvm()
    applied = 0
    with target:
        for legalize in cpu_pipeline.legalize_passes(target):
            mod = legalize(mod)
        lowered = cpu_pipeline.schedule_kernels(cpu_pipeline.relax_pipeline(target, generation)(mod), target, act_bits)
        if tuning_db is not None:
            from edgeq.targets.tune import apply_database

            lowered, applied = apply_database(lowered, target, tuning_db)
        if defaults:
            lowered = cpu_pipeline.schedule_defaults(lowered, target)
    return lowered, applied


def build(mod, spec, tuning_db=None, act_bits: int = 32, generation: bool = False):
    """Lower and build a Relax module for ``spec`` (``generation``: a generation module); returns
    (executable, weight bytes, tuned kernels, int8-activation kernels, the lowered Relax module)."""
    import tvm

    from edgeq.targets.int8_lowbit import count_int8_kernels

    lowered, applied = default_pipeline(mod, spec, tuning_db=tuning_db, act_bits=act_bits, generation=generation)
    weight_bytes = constant_bytes(lowered)
    return (tvm.compile(lowered, target=spec.tvm(), relax_pipeline=None), weight_bytes, applied, count_int8_kernels(lowered),
            lowered)


def gpu_device_code(executable, spec, out: Path) -> Path | None:
    """Write the PTX of the artifact's kernels for ``spec.gpu_arch`` next to it, when nvcc is here.

    TVM embeds CUDA source in the library (compiled for the GPU it loads on); the PTX records
    what the named architecture gets, and checks that the kernels compile for it."""
    import shutil

    if shutil.which("nvcc") is None:
        return None
    from tvm.support import nvcc

    device = [m for m in _module_tree(executable.mod) if m.kind == "cuda"]
    if not device:
        return None
    with spec.tvm():
        ptx = nvcc.compile_cuda(device[0].inspect_source("cuda"), target_format="ptx", arch=spec.gpu_arch, compiler="nvcc")
    path = out.with_suffix(".ptx")
    with atomic_path(path, keep_suffix=True) as tmp:
        Path(tmp).write_bytes(ptx)
    return path


def _module_tree(mod):
    yield mod
    for child in mod.imports:
        yield from _module_tree(child)


def import_model(onnx_path: str | Path, spec, specialize: dict[str, int] | None = None):
    """The Relax module of ``onnx_path`` (dimensions fixed by ``specialize``); import failures
    as CompileError naming the file."""
    return _import(onnx_path, load_onnx(onnx_path), spec, specialize)[0]


def _import(onnx_path, model, spec, specialize):
    from edgeq.targets.importer import import_onnx
    from edgeq.targets.specialize import specialize as fix_dims
    from edgeq.targets.specialize import symbolic_dims

    if specialize:
        model = fix_dims(model, specialize)
    try:
        mod = import_onnx(model, target=spec.name)
    except EdgeqError as exc:
        raise type(exc)(f"{onnx_path}: {exc}") from None
    except Exception as exc:
        hint = ""
        dynamic = [d for d in symbolic_dims(model) if d != "batch"]
        if dynamic:
            hint = f" (symbolic dimensions {', '.join(dynamic)}: to fix one, compile with specialize={{{dynamic[0]!r}: N}} / --specialize {dynamic[0]}=N)"
        raise CompileError(f"{onnx_path}: TVM's ONNX import failed: {type(exc).__name__}: {first_line(exc)}{hint}") from None
    return mod, model


def _import_generation(onnx_path, model, spec, metadata, specialize, max_context, prefill_chunk):
    from edgeq.targets.generation import cache_form, generation_module, generation_settings

    if specialize:
        raise CompileError(f"{onnx_path}: a KV-cache file keeps seq and past symbolic; bound them with max_context, not specialize")
    settings = generation_settings(metadata, max_context, prefill_chunk, onnx_path)
    try:
        mod, model = generation_module(model, settings, spec.name)
        return mod, model, {**settings, "cache": cache_form(mod)}
    except EdgeqError as exc:
        raise type(exc)(f"{onnx_path}: {exc}") from None
    except Exception as exc:
        raise CompileError(f"{onnx_path}: TVM's import of the KV-cache model failed: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None


def compile(onnx_path: str | Path, target: str = "cpu", out_dir: str | Path = ".", name: str | None = None,
            specialize: dict[str, int] | None = None, tuning_db: str | Path | None = None,
            max_context: int | None = None, prefill_chunk: int | None = None, act_bits: int = 32) -> Artifact:
    """Compile ``onnx_path`` for ``target`` into ``out_dir``; returns the Artifact.

    Symbolic input dimensions stay symbolic (the shape arithmetic of torch's export is followed
    by ``symbolic_shapes``), so one artifact takes every sequence length. ``specialize`` fixes
    them by name instead (e.g. ``{"seq": 128}``): the artifact then takes only that size, and
    its metadata says so.
    ``tuning_db``: a database written by ``edgeq tune`` for this model and target; kernels found
    there use their tuned schedules.
    A KV-cache file (``edgeq.export(..., kv_cache=True)``) gives a generation artifact with
    ``prefill`` and ``decode`` functions (``edgeq.targets.generation``): ``max_context`` bounds its
    cache (default: the file's), ``prefill_chunk`` the tokens one prefill call takes.
    ``act_bits=8``: the packed low-bit linears quantize their activations to int8 per row and
    weight group and multiply in integers (``edgeq.targets.int8_lowbit``), where the target has a
    byte dot product; the default 32 keeps float activations (the exact reference).
    """
    if act_bits not in ACT_BITS:
        raise CompileError(f"act_bits={act_bits!r}: expected one of {', '.join(map(str, ACT_BITS))} "
                           "(8: int8 activations in the packed linears, 32: float)")
    from edgeq.export_kv import read_generation_metadata

    spec = get_target(target)
    check_output_dir(out_dir)
    model = load_onnx(onnx_path)
    packed_bytes = onnx_weight_bytes(model)
    name = name or Path(onnx_path).stem
    out = Path(out_dir) / f"{name}.{spec.name}.{spec.artifact}"
    start = time.perf_counter()
    generation = read_generation_metadata(model)
    if generation is None and (max_context is not None or prefill_chunk is not None):
        raise CompileError(f"{onnx_path}: max_context / prefill_chunk apply to KV-cache files (edgeq export --kv-cache)")
    if generation is not None:
        mod, model, generation = _import_generation(onnx_path, model, spec, generation, specialize, max_context, prefill_chunk)
    else:
        mod, model = _import(onnx_path, model, spec, specialize)
    # After the import (a model that cannot be lowered says so whatever the host has installed),
    # before the build (the slow part).
    compiler = spec.require_compiler()
    try:
        executable, weight_bytes, tuned, int8_kernels, lowered = build(mod, spec, tuning_db, act_bits, generation is not None)
    except EdgeqError:
        raise
    except Exception as exc:
        raise CompileError(f"{onnx_path}: TVM build for {spec.name} failed: {type(exc).__name__}: {first_line(exc)}") from None
    if generation is not None:
        from edgeq.targets.generation import with_workspace

        generation = with_workspace(generation, lowered)
    # the library and its .json are renamed into place together, after both are complete: no
    # library without metadata, and no new library described by an older compile's metadata
    with atomic_path(out, keep_suffix=True) as tmp:
        try:
            if compiler:
                from tvm.support import cc

                sources = [str(Path(__file__).with_name(name)) for name in spec.link_sources]
                executable.export_library(str(tmp), fcompile=cc.cross_compiler(compiler, add_files=sources or None))
            else:
                executable.export_library(str(tmp))
        except Exception as exc:
            raise CompileError(f"{onnx_path}: linking the {spec.name} artifact failed: {type(exc).__name__}: {first_line(exc)}") from None
        device_code = gpu_device_code(executable, spec, out) if spec.is_gpu else None
        seconds = time.perf_counter() - start
        artifact = Artifact(
            path=out, target=spec.name, compile_seconds=seconds, size_bytes=tmp.stat().st_size,
            inputs=_value_infos(model.graph.input), outputs=_value_infos(model.graph.output),
            tvm_target=spec.tvm_target, weight_bytes=weight_bytes, onnx_weight_bytes=packed_bytes,
            specialized=dict(specialize) if specialize else None, tuned_kernels=tuned if tuning_db is not None else None,
            device_code=str(device_code) if device_code else None, generation=generation,
            act_bits=act_bits, int8_kernels=int8_kernels if act_bits == 8 else None,
        )
        meta = {k: v for k, v in asdict(artifact).items() if k != "path"}
        if device_code:
            meta["device_code"] = device_code.name
        atomic_write_text(artifact.meta_path, json.dumps(meta, indent=2, default=str))
    return artifact
