"""``edgeq tune``: meta_schedule search over a model's distinct kernels within a time budget.

The kernels are the PrimFuncs that ``compile`` would hand to the default CPU schedules
(``cpu_pipeline.schedule_defaults``), after edgeq's own packed low-bit kernels have replaced theirs; structurally
equal kernels are tuned once. Records go to a meta_schedule JSON database in ``db_dir``;
``compile(..., tuning_db=db_dir)`` looks every kernel up there and uses the tuned schedule where
one was found, the default schedule elsewhere, so a partial search still builds. A short random
search often loses to edgeq's default schedules, so each tuned kernel's best time is compared
with its default schedule's, timed here the same way; kernels where the default won are listed in
``KEPT_DEFAULT`` in the database folder and keep their default schedule, so a database never
makes an artifact slower than an untuned build.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeq._io import atomic_dir, atomic_write_text, check_output_dir
from edgeq.errors import CompileError

TRIALS_PER_KERNEL = 16
# Each build runs in a fresh worker process that first imports TVM (10-30 s on a loaded 2-core
# machine); meta_schedule's default 30 s counts that import and times every build out.
BUILD_TIMEOUT_S = 300
KEPT_DEFAULT = "edgeq_kept_default.json"  # structural hashes of kernels whose default schedule won


@dataclass
class TuneResult:
    db_dir: Path
    kernels: list[str] = field(default_factory=list)  # distinct kernels found, largest first
    tuned: list[str] = field(default_factory=list)  # those searched before the budget ran out
    kept_default: list[str] = field(default_factory=list)  # tuned, but slower than the default schedule
    seconds: float = 0.0


def workload(func):
    """The IRModule meta_schedule records ``func`` under (the same form for tuning and lookup)."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)})


def tuning_target(target):
    """meta_schedule needs the CPU's core count in the target."""
    import tvm

    config = dict(target.export())
    if target.kind.name == "llvm" and "num-cores" not in config:
        config["num-cores"] = os.cpu_count() or 1
    return tvm.target.Target(config)


def distinct_kernels(lowered) -> list[tuple[str, object]]:
    """(name, PrimFunc) of the unscheduled kernels, one per structure, the most work first."""
    import tvm

    seen, kernels = set(), []
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
            continue
        if gv.name_hint.startswith("shape_func"):
            continue
        key = _key(func)
        if key in seen:
            continue
        seen.add(key)
        kernels.append((gv.name_hint, func))
    return sorted(kernels, key=lambda item: -_work(item[1]))


def _work(func) -> int:
    """Product of the largest buffer's static dimensions: a rough size to tune big kernels first."""
    best = 0
    for param in func.params:
        try:
            shape = param.shape
        except AttributeError:
            continue
        size = 1
        for dim in shape:
            size *= int(dim) if hasattr(dim, "value") else 1
        best = max(best, size)
    return best


def tune(onnx_path, db_dir, target: str = "cpu", budget_s: float = 60.0, specialize: dict[str, int] | None = None,
         trials_per_kernel: int = TRIALS_PER_KERNEL, progress: bool = True) -> TuneResult:
    """Search schedules for ``onnx_path``'s kernels for about ``budget_s`` seconds into ``db_dir``."""
    from edgeq.targets.compile import default_pipeline, import_model
    from edgeq.targets.registry import get_target

    if trials_per_kernel < 1 or not budget_s > 0:
        raise CompileError(f"edgeq tune: trials per kernel ({trials_per_kernel}) must be at least 1 and the budget ({budget_s} s) positive")
    spec = get_target(target)
    if spec.is_gpu:
        raise CompileError(f"edgeq tune: target {spec.name!r} is a GPU target; tuning covers CPU targets")
    check_output_dir(db_dir)
    start = time.perf_counter()
    mod = import_model(onnx_path, spec, specialize)
    lowered, _ = default_pipeline(mod, spec, defaults=False)
    kernels = distinct_kernels(lowered)
    result = TuneResult(Path(db_dir), [name for name, _ in kernels])
    # tuned in a hidden copy of the database beside db_dir, moved in when done: an interrupted
    # run leaves db_dir as it was (the copy is removed, or by the next run if it was SIGKILLed)
    with atomic_dir(result.db_dir) as stage:
        if result.db_dir.is_dir():
            shutil.copytree(result.db_dir, stage, dirs_exist_ok=True)
        _tune_kernels(kernels, spec, stage, start, budget_s, trials_per_kernel, progress, result)
        result.db_dir.mkdir(parents=True, exist_ok=True)
        for staged in sorted(p for p in stage.rglob("*") if p.is_file()):
            target_path = result.db_dir / staged.relative_to(stage)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target_path)
    result.seconds = time.perf_counter() - start
    return result


def _tune_kernels(kernels, spec, db_dir: Path, start: float, budget_s: float, trials_per_kernel: int, progress: bool,
                  result: TuneResult) -> None:
    from tvm.s_tir import meta_schedule as ms

    tvm_target = tuning_target(spec.tvm())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(kernels), desc="tune", unit="kernel")
    kept = _kept_default(db_dir)
    for name, func in kernels:
        if time.perf_counter() - start >= budget_s:
            break
        database = ms.tune_tir(workload(func), tvm_target, str(db_dir), max_trials_global=trials_per_kernel,
                               num_trials_per_iter=min(trials_per_kernel, 8), cost_model="random",
                               task_scheduler="round-robin",
                               builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=BUILD_TIMEOUT_S))
        result.tuned.append(name)
        default_s = default_seconds(func, spec.tvm())
        best = database.query_tuning_record(workload(func), tvm_target, "main")
        tuned_s = float(sum(float(t) for t in best.run_secs) / len(best.run_secs)) if best and best.run_secs else None
        if default_s is not None and (tuned_s is None or default_s <= tuned_s):
            kept.add(_key(func))
            result.kept_default.append(name)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    atomic_write_text(db_dir / KEPT_DEFAULT, json.dumps(sorted(kept)))


def default_seconds(func, target) -> float | None:
    """Median run time of ``func`` under edgeq's default CPU schedule on this host (None when a
    dimension is symbolic: nothing to time)."""
    import numpy as np
    import tvm

    from edgeq.targets import cpu_pipeline

    shapes = []
    for param in func.params:  # buffers; a scalar parameter (a symbolic size) has no shape
        shape = getattr(param, "shape", None)
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            return None
        shapes.append(([int(d) for d in shape], str(param.dtype)))
    lib = tvm.tirx.build(cpu_pipeline.schedule_defaults(workload(func), target), target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 4, shape).astype(dtype) if "int" in dtype
                               else rng.normal(size=shape).astype(dtype)) for shape, dtype in shapes]
    return float(lib.time_evaluator("main", tvm.cpu(), number=3, repeat=5)(*args).median)


def _key(func) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(workload(func)))


def _kept_default(db_dir: Path) -> set[str]:
    path = db_dir / KEPT_DEFAULT
    return set(json.loads(path.read_text())) if path.exists() else set()


def check_database(db_dir) -> tuple[Path, Path]:
    """The database's (workload, record) files; a CompileError when ``db_dir`` is not one."""
    db_dir = Path(db_dir)
    workloads, records = db_dir / "database_workload.json", db_dir / "database_tuning_record.json"
    if not workloads.is_file() or not records.is_file():
        raise CompileError(f"{db_dir}: not a tuning database (no database_workload.json / database_tuning_record.json)")
    return workloads, records


def apply_database(lowered, target, db_dir) -> tuple[object, int]:
    """``lowered`` with every unscheduled kernel found in the database replaced by its tuned
    schedule, unless tuning found the default faster; returns (module, number replaced)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    workloads, records = check_database(db_dir)
    try:
        database = ms.database.JSONDatabase(str(workloads), str(records), allow_missing=False)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise CompileError(f"{db_dir}: unreadable tuning database ({type(exc).__name__}: {text[0] if text else ''})") from None
    tvm_target = tuning_target(target)
    kept = _kept_default(db_dir)
    applied = 0
    for gv, func in list(lowered.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
            continue
        if _key(func) in kept:
            continue
        sch = database.query_schedule(workload(func), tvm_target, workload_name="main")
        if sch is None:
            continue
        tuned = sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
        if func.attrs and "global_symbol" in func.attrs:
            tuned = tuned.with_attr("global_symbol", func.attrs["global_symbol"])
        lowered[gv] = tuned
        applied += 1
    return lowered, applied
