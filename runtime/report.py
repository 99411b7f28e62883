"""``edgeq validate`` as a library call: run a model's ONNX file and its compiled artifacts on
their executors, compare each with the reference, and name the first diverging node of any
executor that disagrees beyond tolerance.

The reference is PyTorch (the built-in CNN under a recipe, or a ``torch.export`` program), or
onnxruntime on an ONNX file (the model itself by default, or an original the model was derived
from). Compiled artifacts run on TVM here when built for this host (``cpu``) and on the device
at ``device`` (``rpc://`` or ``tracker://``) otherwise.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeq.errors import RuntimeExecError
from edgeq.runtime.executors import (Executor, OrtExecutor, TorchExecutor, TvmExecutor, artifact_of, executor_output_names,
                                     run_once)
from edgeq.runtime.localize import Divergence, RunGraph, first_divergence, ort_runner, tvm_runner
from edgeq.runtime.validate import Numerics, Tolerance, compare_outputs

CALIB_SAMPLES = 512  # as the demo and the test fixtures calibrate the built-in CNN
_NUMERICS_FIELDS = {f.name for f in fields(Numerics)}


@dataclass
class ExecutorResult:
    """One executor against the reference on every graph output.

    ``outputs`` holds one Numerics per output, in graph order, and ``ok`` is the verdict over all
    of them; the first output's figures (a model's main output: logits, class scores) also read
    directly (``result.max_abs``, ``result.cosine``, ``result.executor``), as for a model with
    one output. Judge a multi-output model by ``ok`` or ``outputs``, not by those figures alone.
    """

    outputs: list[Numerics]  # one per graph output, in graph order
    ok: bool
    seconds: float
    divergence: Divergence | None = None
    note: str | None = None
    tolerance: Tolerance | None = None  # its own bar (the float comparison's), else the report's
    artifact: str = ""  # the file the executor ran (an ONNX file or a compiled artifact)

    @property
    def numerics(self) -> Numerics:
        """The first output's numerics (a model's main output: logits, class scores)."""
        return self.outputs[0]

    def __getattr__(self, name: str):
        if name in _NUMERICS_FIELDS and self.__dict__.get("outputs"):
            return getattr(self.outputs[0], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict:
        return {"numerics": self.numerics.to_dict(), "outputs": [n.to_dict() for n in self.outputs], "ok": self.ok,
                "seconds": round(self.seconds, 3),
                "divergence": self.divergence.to_dict() if self.divergence else None, "note": self.note,
                "artifact": self.artifact}


@dataclass
class ValidationReport:
    model: str
    reference: str
    inputs: str
    tolerance: Tolerance
    results: list[ExecutorResult] = field(default_factory=list)
    float_reference: str | None = None  # the float model's label, when compared with it too

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    # the report reads as the list of its results: ``ort, tvm = edgeq.validate(...)``
    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index):
        return self.results[index]

    def result(self, executor: str) -> ExecutorResult:
        return next(r for r in self.results if r.numerics.executor == executor)

    def to_dict(self) -> dict:
        out = {"model": self.model, "reference": self.reference, "inputs": self.inputs, "ok": self.ok,
               "tolerance": asdict(self.tolerance), "results": [r.to_dict() for r in self.results]}
        if self.float_reference:
            out["float_reference"] = self.float_reference
        return out

    def _row(self, r: ExecutorResult, n: Numerics) -> list[str]:
        name = f"{n.executor} [{n.output}]" if n.output else n.executor
        return [
            name, f"{n.max_abs:.3g}", f"{n.max_rel:.3g}", f"{n.cosine:.6f}",
            "-" if n.top1_agreement is None else f"{n.top1_agreement:.2%}",
            "-" if n.mismatches is None else str(n.mismatches), f"{r.seconds:.2f} s",
            "ok" if (r.tolerance or self.tolerance).accepts(n) else "DIVERGES",
        ]

    def table(self) -> str:
        from edgeq._table import format_table

        rows = []
        for r in self.results:
            for n in r.outputs:
                rows.append(self._row(r, n))
        headers = ["executor", "max abs", "max rel", "cosine", "top-1 agree", "mismatches", "time", "verdict"]
        title = f"{self.model} vs {self.reference}" + (f" and the float model {self.float_reference}" if self.float_reference else "")
        lines = [format_table(headers, rows, title=f"{title} on {self.inputs}")]
        for r in self.results:
            if r.divergence:
                lines.append(f"{r.numerics.executor}: {r.divergence.describe()}")
            elif r.note:
                lines.append(f"{r.numerics.executor}: {r.note}")
        return "\n".join(lines)


@dataclass
class Reference:
    executor: Executor
    label: str
    graph: Path | None  # the ONNX graph onnxruntime runs as the trusted executor, if any


def reference_for(spec: str | Executor, model_path: Path | None) -> Reference:
    """``onnxruntime`` (the model's own graph), ``digits-cnn:RECIPE`` (the built-in CNN quantized
    by RECIPE, in PyTorch; ``digits:RECIPE`` is accepted too), ``PATH.onnx`` (another graph on onnxruntime), any model
    ``edgeq.model_spec.load_model`` accepts (in PyTorch; never a pickle), or an Executor."""
    if isinstance(spec, Executor):
        return Reference(spec, spec.name, model_path)
    if spec == "onnxruntime":
        if model_path is None:
            raise RuntimeExecError("reference 'onnxruntime' runs the model's own ONNX file: name a file (X.onnx) or a model")
        return Reference(OrtExecutor(model_path), f"onnxruntime ({model_path.name})", model_path)
    from edgeq.models import is_builtin

    if ":" in spec and is_builtin(spec.partition(":")[0], "digits-cnn"):
        from edgeq.models.digits_cnn import digits_data, load_digits_cnn
        from edgeq.quant import quantize
        from edgeq.recipes import resolve_recipe

        recipe = spec.split(":", 1)[1]
        model = load_digits_cnn()
        if recipe != "float":
            calib = digits_data().x_train[:CALIB_SAMPLES] if resolve_recipe(recipe).needs_calibration else None
            model = quantize(model, recipe, calib=calib)
        return Reference(TorchExecutor(model), f"PyTorch (built-in CNN, {recipe})", model_path)
    path = Path(spec)
    if path.suffix == ".onnx":
        return Reference(OrtExecutor(path), f"onnxruntime ({path.name})", path)
    from edgeq.model_spec import load_model

    loaded = load_model(spec)
    return Reference(TorchExecutor(loaded.module), f"PyTorch ({path.name or spec})", model_path)


@dataclass
class Suspect:
    make: Callable[[], Executor]  # made when it runs: a device serves one RPC session at a time
    graph: Path  # the ONNX graph it runs (or was compiled from)
    runner: RunGraph  # runs an exposed copy of that graph the way the executor does


def suspects_for(model_path: Path, artifacts: Sequence[str | Path], device: str | None,
                 inputs: Sequence[np.ndarray], include_onnx: bool) -> list[Suspect]:
    from edgeq.targets.compile import Artifact

    out = []
    if include_onnx:
        out.append(Suspect(lambda: OrtExecutor(model_path), model_path, ort_runner(inputs)))
    for path in artifacts:
        art = Artifact.load(path)
        make = artifact_executor(art.path, device)
        out.append(Suspect(make, model_path, tvm_runner(inputs, "cpu") if art.target == "cpu"
                           else tvm_runner(inputs, art.target, device)))
    return out


def artifact_executor(path: str | Path, device: str | None) -> Callable[[], Executor]:
    """What makes the executor of a compiled artifact: TVM here for a ``cpu`` build, the
    harness or RPC device ``device`` names otherwise; a RuntimeExecError saying which
    ``--device`` to pass when the artifact is for another machine and none is given."""
    from edgeq.runtime.device import harness_device_for, is_harness_device
    from edgeq.runtime.kernel_harness import HarnessExecutor
    from edgeq.runtime.rpc import RpcExecutor
    from edgeq.targets.compile import Artifact

    art = Artifact.load(path)
    if art.target == "cpu":
        return functools.partial(TvmExecutor, art.path)
    if device and is_harness_device(device):
        return functools.partial(HarnessExecutor, art.path, device)
    if device:
        return functools.partial(RpcExecutor, art.path, device)
    harness = harness_device_for(art.target)
    hint = (f"--device {harness} (prepare it with `edgeq device start {harness}`)" if harness else
            f"--device rpc://HOST:PORT (start an emulated one with `edgeq device start {art.target}`)")
    raise RuntimeExecError(f"{art.path} is built for {art.target}, not this host: pass {hint}")


def validate_model(
    model: str | Path,
    artifacts: Sequence[str | Path] = (),
    inputs: Sequence[np.ndarray] = (),
    reference: str | Executor = "onnxruntime",
    device: str | None = None,
    tolerance: Tolerance = Tolerance(),
    localize: bool = True,
    inputs_label: str = "given inputs",
    float_reference: str | Executor | None = None,
    float_tolerance: Tolerance | None = None,
) -> ValidationReport:
    """Compare the model's executors with the reference on ``inputs``, every graph output.
    ``float_reference`` (a model spec or an Executor): the float model, a second reference;
    the reference and every executor are then also compared with it, held to
    ``float_tolerance`` (default ``FLOAT_TOLERANCE``: quantization error passes, a wrong
    quantized model does not)."""
    from edgeq.runtime.float_reference import FLOAT_TOLERANCE

    model_path = Path(model)
    ref = reference_for(reference, model_path)
    floats = reference_for(float_reference, model_path) if float_reference is not None else None
    include_onnx = not (reference == "onnxruntime")
    suspects = suspects_for(model_path, artifacts, device, inputs, include_onnx)
    report = ValidationReport(str(model_path), ref.label, inputs_label, tolerance)
    names = output_names(model_path)
    got_by_executor: list[tuple[str, list[np.ndarray]]] = []
    want = ref.executor.run(inputs)
    if len(want) != len(names):
        raise RuntimeExecError(f"reference {ref.label} gives {len(want)} outputs; {model_path} has {len(names)} "
                               f"({', '.join(names)})")
    for s in suspects:
        result, executor, got = _run_and_compare(s.make, want, inputs, tolerance, names=names)
        if not result.ok and localize:
            _localize(result, s, executor, ref, inputs, tolerance)
        report.results.append(result)
        got_by_executor.append((executor.name, got))
    if floats is not None:
        report.float_reference = floats.label
        _compare_with_float(report, floats, inputs, [(ref.executor.name, want), *got_by_executor], names,
                            float_tolerance or FLOAT_TOLERANCE)
    return report


def validate(reference, executors: Sequence[Executor], inputs: Sequence[np.ndarray], tolerance: Tolerance = Tolerance(),
             float_reference=None, float_tolerance: Tolerance | None = None) -> ValidationReport:
    """The Python API's entry to the same path as ``edgeq validate``: run every executor on
    ``inputs`` and compare each of its outputs with the reference's (a torch module, an Executor
    or a model name ``reference_for`` takes). The report iterates over its results, one per
    executor, in order (then, with ``float_reference``, one per executor against the float model)."""
    ref = reference_for(reference if isinstance(reference, (str, Executor)) else TorchExecutor(reference), None)
    floats = None
    if float_reference is not None:
        floats = reference_for(float_reference if isinstance(float_reference, (str, Executor)) else TorchExecutor(float_reference), None)
    want = ref.executor.run(inputs)
    report = ValidationReport(", ".join(artifact_of(ex) for ex in executors), ref.label, "given inputs", tolerance)
    got_by_executor = []
    for ex in executors:
        result, _, got = _run_and_compare(lambda ex=ex: ex, want, inputs, tolerance, reference_name=ref.executor.name)
        report.results.append(result)
        got_by_executor.append((ex.name, got))
    if floats is not None:
        report.float_reference = floats.label
        names = [n.output for n in report.results[0].outputs] if report.results else [None] * len(want)
        _compare_with_float(report, floats, inputs, [(ref.executor.name, want), *got_by_executor], names,
                            float_tolerance or _float_tolerance())
    return report


def _float_tolerance() -> Tolerance:
    from edgeq.runtime.float_reference import FLOAT_TOLERANCE

    return FLOAT_TOLERANCE


def _run_and_compare(make: Callable[[], Executor], want: list[np.ndarray], inputs, tolerance: Tolerance,
                     names: Sequence[str] | None = None, reference_name: str = "reference"):
    """(result, executor, its outputs): one executor run on ``inputs`` and compared with ``want``
    on every output (``names``: the graph's output names; None: the executor's own)."""
    start = time.perf_counter()
    executor, got = run_once(make, inputs)
    artifact = artifact_of(executor)
    prefix = ""
    if names is None:  # the API's call: messages name the artifact
        names, prefix = executor_output_names(executor, len(got)), f"{artifact}: "
        if len(want) != len(got):
            raise RuntimeExecError(f"{artifact} gives {len(got)} outputs ({', '.join(names)}); "
                                   f"the reference ({reference_name}) gives {len(want)}")
    try:
        outputs = compare_outputs(executor.name, want, got, names)
    except ValueError as exc:
        raise RuntimeExecError(f"{prefix}{exc}") from None
    result = ExecutorResult(outputs, ok=all(tolerance.accepts(n) for n in outputs), seconds=time.perf_counter() - start,
                            artifact=artifact)
    return result, executor, got


def _compare_with_float(report: ValidationReport, floats: Reference, inputs, outputs: list[tuple[str, list]], names,
                        tolerance: Tolerance) -> None:
    """One result row per executor (the reference first) against the float model's outputs."""
    start = time.perf_counter()
    want = floats.executor.run(inputs)
    seconds = time.perf_counter() - start
    if len(want) != len(names):
        raise RuntimeExecError(f"float reference {floats.label} gives {len(want)} outputs; the model has {len(names)}")
    for name, got in outputs:
        try:
            numerics = compare_outputs(f"{name} vs float", want, got, names)
        except ValueError as exc:
            raise RuntimeExecError(str(exc)) from None
        report.results.append(ExecutorResult(numerics, ok=all(tolerance.accepts(n) for n in numerics), seconds=seconds,
                                             tolerance=tolerance))


def output_names(model_path: Path) -> list[str]:
    """The graph's output names, in order (weights stored outside the file are not read)."""
    from edgeq.targets.compile import load_onnx

    return [o.name for o in load_onnx(model_path, load_external_data=False).graph.output]


def _localize(result: ExecutorResult, suspect: Suspect, executor: Executor, ref: Reference, inputs, tolerance: Tolerance) -> None:
    from edgeq.targets.compile import load_onnx

    if ref.graph is None or (isinstance(executor, OrtExecutor) and ref.graph.resolve() == suspect.graph.resolve()):
        result.note = ("cannot localize: onnxruntime on this graph is the trusted executor; "
                       "pass the graph it should match with --reference ORIGINAL.onnx")
        return
    result.divergence = first_divergence(load_onnx(ref.graph), load_onnx(suspect.graph), suspect.runner, inputs, tolerance)
    if result.divergence is None:
        result.note = "every intermediate tensor agrees with onnxruntime's; the difference is in the reference itself"
