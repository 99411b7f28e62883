"""Latency and per-operator time of an artifact on its executors, and the accuracy / latency /
size trade-off across recipes on the built-in CNN, with PNG plots.

Latency: ``warmup`` untimed runs, then ``repeat`` timed runs; median and p90. On this host the
clock is wall time around one call; on a device it is TVM's ``time_evaluator`` on the device
(emulated devices give emulated times: compare them only with each other).

Per-operator time: onnxruntime's profiler (its JSON trace, node events) and, for TVM, the
Relax VM's instrument hook timed around every call the VM makes (TVM 0.27 has no VM profiler).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeq.errors import RuntimeExecError
from edgeq.runtime.executors import Executor, Inputs, TvmExecutor


@dataclass
class Latency:
    executor: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeat: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpTime:
    name: str  # onnxruntime: node name; TVM: the compiled function's symbol
    op: str  # op type (onnxruntime) or the function's kind, its instance numbers removed (TVM)
    calls: int
    total_ms: float  # per run

    def to_dict(self) -> dict:
        return asdict(self)


def latency(executor: Executor, inputs: Inputs, warmup: int = 5, repeat: int = 50) -> Latency:
    """Median and p90 of ``repeat`` runs after ``warmup`` runs."""
    if repeat < 1 or warmup < 0:
        raise RuntimeExecError(f"profile: repeat ({repeat}) must be at least 1 and warmup ({warmup}) at least 0")
    if hasattr(executor, "time_runs"):
        seconds = executor.time_runs(inputs, warmup, repeat)
    else:
        for _ in range(warmup):
            executor.run(inputs)
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            executor.run(inputs)
            seconds.append(time.perf_counter() - start)
    ms = np.asarray(seconds) * 1e3
    return Latency(executor.name, float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.mean()), float(ms.min()),
                   repeat, warmup)


def tvm_op_times(executor: TvmExecutor, inputs: Inputs, repeat: int = 10) -> list[OpTime]:
    """Time of every function the Relax VM calls, per run, VM builtins (allocation, shape
    checks) summed into one ``vm.builtin`` row."""
    executor.run(inputs)  # warm-up, uninstrumented
    return vm_op_times(executor.vm, lambda: executor.run(inputs), repeat)


def vm_op_times(vm, run, repeat: int = 10, split_builtins: bool = False) -> list[OpTime]:
    """Time of every function the Relax VM ``vm`` calls in ``run()``, per run (``repeat`` runs);
    the VM builtins in one ``vm.builtin`` row, or each its own (``split_builtins``). The hook
    costs microseconds per call and lets a thread pool idle between kernels: compare rows of one
    profile, and take whole-step times from uninstrumented runs."""
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            key = "vm.builtin" if symbol.startswith("vm.builtin") and not split_builtins else symbol
            totals[key] += time.perf_counter() - started.pop(symbol)
            calls[key] += 1
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(repeat):
            run()
    finally:
        vm.set_instrument(lambda *args: 0)
    return sorted(
        (OpTime(name, _function_kind(name), calls[name] // repeat, totals[name] * 1e3 / repeat) for name in totals),
        key=lambda o: -o.total_ms,
    )


def _function_kind(symbol: str) -> str:
    """``fused_conv2d1_add3_relu`` -> ``fused_conv2d_add_relu``: TVM numbers each instance."""
    return "_".join(re.sub(r"(?<=\D)\d+$", "", part) for part in symbol.split("_"))


def ort_op_times(onnx_path: str | Path, inputs: Inputs, repeat: int = 10, threads: int | None = None) -> list[OpTime]:
    """Per-node time from onnxruntime's profiler (the kernel time of each node, per run)."""
    from edgeq.runtime.ort import ort_session

    onnx_path = Path(onnx_path).resolve()
    with tempfile.TemporaryDirectory(prefix="edgeq-ortprof-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # onnxruntime writes its trace to the current folder
        try:
            session = ort_session(onnx_path, threads=threads, profile=True)
            names = [i.name for i in session.get_inputs()]
            feed = dict(zip(names, inputs))
            session.run(None, feed)
            for _ in range(repeat):
                session.run(None, feed)
            trace = Path(session.end_profiling())
            events = json.loads(trace.read_text())
        finally:
            os.chdir(cwd)
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    ops: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        totals[node] += ev["dur"] / 1e3
        calls[node] += 1
        ops[node] = ev.get("args", {}).get("op_name", "?")
    runs = repeat + 1
    return sorted((OpTime(n, ops[n], calls[n] // runs, totals[n] / runs) for n in totals), key=lambda o: -o.total_ms)


def by_op(times: Sequence[OpTime]) -> dict[str, float]:
    """Milliseconds per run summed by op kind, largest first."""
    acc: dict[str, float] = defaultdict(float)
    for t in times:
        acc[t.op] += t.total_ms
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_op_times(breakdowns: dict[str, Sequence[OpTime]], path: str | Path, title: str, top: int = 12) -> Path:
    """Horizontal bars: time per run of each op kind, one panel per executor."""

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(breakdowns), figsize=(6.5 * len(breakdowns), 4.8), squeeze=False)
    for ax, (executor, times) in zip(axes[0], breakdowns.items()):
        kinds = list(by_op(times).items())[:top][::-1]
        total = sum(t.total_ms for t in times)
        ax.barh([k for k, _ in kinds], [v for _, v in kinds], color="#4c72b0")
        for i, (_, v) in enumerate(kinds):
            ax.text(v, i, f" {v:.3g} ms ({v / total:.0%})", va="center", fontsize=8)
        ax.set_xlabel("milliseconds per run")
        ax.set_title(f"{executor}: {total:.3g} ms per run")
        ax.set_xlim(0, max(v for _, v in kinds) * 1.45)
    return _save_figure(fig, title, path)


def _save_figure(fig, title: str, path: str | Path) -> Path:
    """Title, lay out and write ``fig`` as a PNG atomically, then free it."""
    from edgeq._io import atomic_path

    plt = _pyplot()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


@dataclass
class RecipePoint:
    recipe: str
    top1: float  # PyTorch reference, digits test set
    onnx_bytes: int
    artifact_bytes: int
    latency: dict[str, Latency]

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "latency"},
                "latency": {k: v.to_dict() for k, v in self.latency.items()}}


def recipe_sweep(recipes: Sequence[str], out_dir: str | Path, batch: int = 1, warmup: int = 5, repeat: int = 50,
                 device: str | None = None, target: str = "cpu") -> tuple[list[RecipePoint], dict[str, str]]:
    """Quantize the built-in CNN with each recipe (``float`` for none), export, compile for
    ``target``; accuracy of the PyTorch model, latency on onnxruntime and TVM (here, or on
    ``device`` when ``target`` is another machine's), and file sizes. Returns the points and,
    for recipes that do not apply to the CNN, the reason."""
    import torch
    from tqdm import tqdm

    from edgeq.errors import EdgeqError
    from edgeq.export import export
    from edgeq.models.digits_cnn import accuracy, digits_data, load_digits_cnn
    from edgeq.quant import quantize
    from edgeq.runtime.executors import OrtExecutor
    from edgeq.targets.compile import compile as compile_onnx

    data = digits_data()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = [data.x_test[:batch].numpy()]
    points: list[RecipePoint] = []
    skipped: dict[str, str] = {}
    for recipe in tqdm(recipes, desc="recipes", unit="recipe"):
        model = load_digits_cnn()
        try:
            if recipe != "float":
                model = quantize(model, recipe, calib=data.x_train[:512])
            onnx_path = export(model, data.x_test[:1], out / f"digits_cnn.{recipe}.onnx")
            artifact = compile_onnx(onnx_path, target=target, out_dir=out)
        except EdgeqError as exc:
            skipped[recipe] = str(exc)
            tqdm.write(f"{recipe}: skipped: {exc}")
            continue
        with torch.no_grad():
            top1 = accuracy(model(data.x_test), data.y_test)
        if device:
            from edgeq.runtime.device import is_harness_device
            from edgeq.runtime.kernel_harness import HarnessExecutor
            from edgeq.runtime.rpc import RpcExecutor

            tvm_ex: Executor = (HarnessExecutor(artifact.path, device) if is_harness_device(device)
                                else RpcExecutor(artifact.path, device))
        else:
            tvm_ex = TvmExecutor(artifact.path)
        lat = {ex.name: latency(ex, x, warmup, repeat) for ex in (OrtExecutor(onnx_path, threads=1), tvm_ex)}
        points.append(RecipePoint(recipe, top1, Path(onnx_path).stat().st_size, artifact.size_bytes, lat))
    return points, skipped


def plot_tradeoff(points: Sequence[RecipePoint], path: str | Path, title: str) -> Path:
    """Two panels sharing the accuracy axis: accuracy against median latency (bars to p90, one
    marker per executor) and against file size (ONNX model and compiled artifact); one colour
    per recipe."""
    from matplotlib.lines import Line2D


    plt = _pyplot()
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    colors = {p.recipe: plt.cm.tab10(i % 10) for i, p in enumerate(points)}
    executors = sorted({name for p in points for name in p.latency})
    markers = dict(zip(executors, "o^sDv"))
    for p in points:
        acc = p.top1 * 100
        for name, lat in p.latency.items():
            ax_lat.errorbar(lat.median_ms, acc, xerr=[[0], [max(lat.p90_ms - lat.median_ms, 0)]], fmt=markers[name],
                            color=colors[p.recipe], markersize=8, capsize=3, alpha=0.85)
        ax_size.scatter(p.onnx_bytes / 1024, acc, marker="o", s=70, color=colors[p.recipe], alpha=0.85)
        ax_size.scatter(p.artifact_bytes / 1024, acc, marker="s", s=70, facecolors="none", edgecolors=colors[p.recipe])
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("median latency per batch, ms (log; bar to p90)")
    ax_lat.set_ylabel("top-1 accuracy, digits test set (%)")
    ax_size.set_xlabel("file size, KiB")
    lo = min(p.top1 for p in points) * 100
    ax_lat.set_ylim(lo - max(1.0, 0.1 * (100 - lo)), 100.3)
    for ax in (ax_lat, ax_size):
        ax.grid(alpha=0.3)
    recipe_handles = [Line2D([], [], marker="o", linestyle="", color=c, label=r) for r, c in colors.items()]
    exec_handles = [Line2D([], [], marker=markers[e], linestyle="", color="gray", label=e) for e in executors]
    size_handles = [Line2D([], [], marker="o", linestyle="", color="gray", label="ONNX model"),
                    Line2D([], [], marker="s", linestyle="", markerfacecolor="none", color="gray", label="TVM artifact")]
    ax_lat.legend(handles=recipe_handles + exec_handles, fontsize=8, loc="lower left", title="recipe / executor")
    ax_size.legend(handles=size_handles, fontsize=8, loc="lower left", title="file")
    return _save_figure(fig, title, path)


def summarize(latencies: Sequence[Latency]) -> str:
    from edgeq._table import format_table

    rows = [[lat.executor, f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.min_ms:.3f}", lat.repeat] for lat in latencies]
    base = latencies[0].median_ms
    for row, lat in zip(rows, latencies):
        row.append(f"{lat.median_ms / base:.2f}x")
    return format_table(["executor", "median ms", "p90 ms", "min ms", "runs", f"vs {latencies[0].executor}"], rows)
