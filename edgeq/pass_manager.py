"""The pass manager: named ONNX-to-ONNX passes, what each requires and guarantees, named
pipelines, and a verify mode. Every ONNX rewrite of edgeq registers here, wherever it lives:
``edgeq.export_passes`` (the ``export`` pipeline, after torch's exporter), ``edgeq.passes`` (the
``default`` pipeline and ``integerize``) and ``edgeq.targets.pre_tvm`` (the ``pre_tvm`` pipeline,
before TVM's importer). The manager sits below all three so that each layer can run its own.

A pass declares properties (names in ``PROPERTIES``, each a predicate on the model) that must
hold before it runs (``requires``) and that hold after it (``guarantees``); the manager checks
both, so a pass that breaks its promise is named. In verify mode the manager runs the model on
onnxruntime before and after every pass, on seeded (or given) inputs, and stops at the first
pass that changes the outputs beyond that pass's tolerance, naming it. Integer outputs, and
every output of an integer-only graph, must stay bit for bit. Ops that only a later stage reads
(the TVM importer's ``edgeq.tvm`` ops) run in verify mode through the standard ONNX their module
registers with ``register_onnx_reference``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from edgeq._inputs import random_inputs
from edgeq.errors import PassError


def default_opset(model: onnx.ModelProto) -> int:
    """The model's standard ONNX opset (21 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 21)


def _has_no(op_type: str) -> Callable[[onnx.ModelProto], bool]:
    return lambda model: all(n.op_type != op_type for n in model.graph.node)


def _qdq(model: onnx.ModelProto) -> bool:
    inputs = {i.name for i in model.graph.input}
    return any(n.op_type == "QuantizeLinear" and n.input[0] in inputs for n in model.graph.node)


def _single_assignment(model: onnx.ModelProto) -> bool:
    return _assigned_twice(model.graph) is None


# Each property is a predicate on the model; pass modules add their own (``register_property``).
PROPERTIES: dict[str, Callable[[onnx.ModelProto], bool]] = {
    "qdq": _qdq,  # activations quantized by QuantizeLinear from the graph input on
    "no_batchnorm": _has_no("BatchNormalization"),
    "single_assignment": _single_assignment,  # every value name is written by one node
}


def register_property(name: str, predicate: Callable[[onnx.ModelProto], bool]) -> None:
    PROPERTIES[name] = predicate


def _holds(name: str, model: onnx.ModelProto) -> bool:
    return name in PROPERTIES and PROPERTIES[name](model)


@dataclass(frozen=True)
class Pass:
    """One pass. ``run`` returns the rewritten model (it may change its argument).

    ``tolerance`` bounds max |after - before| / max |before| over float outputs in verify mode;
    0 means bit for bit.
    """

    name: str
    run: Callable[[onnx.ModelProto], onnx.ModelProto]
    doc: str
    requires: frozenset[str] = field(default_factory=frozenset)
    guarantees: frozenset[str] = field(default_factory=frozenset)
    tolerance: float = 1e-5
    waived_by: dict[str, frozenset[str]] = field(default_factory=dict)  # option -> guarantees it lifts

    def promised(self, options: dict) -> frozenset[str]:
        waived = set().union(*(self.waived_by.get(k, frozenset()) for k, v in options.items() if v))
        return self.guarantees - waived


_PASSES: dict[str, Pass] = {}
_PIPELINES: dict[str, tuple[str, ...]] = {}
_REFERENCES: dict[tuple[str, str], Callable[[onnx.NodeProto, int], list[onnx.NodeProto]]] = {}
CHECKER_MAX_BYTES = (1 << 31) - (1 << 20)  # onnx.checker takes a model proto only below protobuf's 2 GiB


def register_pass(p: Pass) -> Pass:
    unknown = (p.requires | p.guarantees) - set(PROPERTIES)
    if unknown:
        raise PassError(f"pass {p.name!r} names unknown properties {sorted(unknown)}")
    if p.name in _PIPELINES:
        raise PassError(f"pass {p.name!r} has the name of a pipeline")
    _PASSES[p.name] = p
    return p


def register_pipeline(name: str, passes: Sequence[str]) -> tuple[str, ...]:
    """Name an ordered list of passes; ``run_passes(model, pipeline=name)`` and ``edgeq optimize
    --passes name`` run it."""
    if name in _PASSES:
        raise PassError(f"pipeline {name!r} has the name of a pass")
    _PIPELINES[name] = tuple(passes)
    return _PIPELINES[name]


def register_onnx_reference(domain: str, op_type: str, expand: Callable[[onnx.NodeProto, int], list[onnx.NodeProto]]) -> None:
    """How verify mode runs an op that onnxruntime cannot: ``expand(node, opset)`` gives standard
    ONNX (or ``edgeq`` ops, which get their function bodies) computing the same outputs."""
    _REFERENCES[(domain, op_type)] = expand


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def get_pipeline(name: str) -> tuple[str, ...]:
    if name not in _PIPELINES:
        raise PassError(f"unknown pipeline {name!r}; known pipelines: {', '.join(sorted(_PIPELINES))} "
                        "(import edgeq.targets to register pre_tvm)")
    return _PIPELINES[name]


def pass_names() -> list[str]:
    return sorted(_PASSES)


def pipeline_names() -> list[str]:
    return sorted(_PIPELINES)


def expand_pipelines(names: Sequence[str]) -> list[str]:
    """Pass names, with each pipeline name replaced by its passes (unknown names fail here)."""
    out: list[str] = []
    for name in names:
        if name in _PIPELINES:
            out += _PIPELINES[name]
        else:
            out.append(get_pass(name).name)
    return out


@dataclass
class PassReport:
    name: str
    nodes_before: int
    nodes_after: int
    max_rel_change: float | None  # None when not verified


def seeded_inputs(model: onnx.ModelProto, seed: int = 0, dynamic_dim: int = 2) -> dict[str, np.ndarray]:
    """Inputs for every graph input (``edgeq._inputs.random_inputs``): symbolic dims set to
    ``dynamic_dim``; floats ~ N(0, 1), integers in [0, 10) (token ids and indices stay in range for
    small vocabularies)."""
    return random_inputs(model, seed, int_high=10, default_dim=dynamic_dim)


def runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy that onnxruntime runs: ops with an ONNX reference expanded, and
    ``edgeq`` nodes given their function bodies."""
    from edgeq.opset import DOMAIN, OPSET_VERSION, attach_functions

    referenced = any((n.domain, n.op_type) in _REFERENCES for n in model.graph.node)
    if not referenced and all(n.domain != DOMAIN for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = default_opset(copy)
    nodes = [m for n in copy.graph.node
             for m in (_REFERENCES[(n.domain, n.op_type)](n, opset) if (n.domain, n.op_type) in _REFERENCES else [n])]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    if any(n.domain == DOMAIN for n in nodes) and not any(o.domain == DOMAIN for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return attach_functions(copy)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgeq.runtime.ort import ort_session  # verify mode only: passes do not need a runtime

    return ort_session(runnable(model).SerializeToString()).run(None, feeds)


def _change(before: list[np.ndarray], after: list[np.ndarray]) -> tuple[float, bool]:
    """(max relative change over outputs, whether any integer output changed at all).

    NaN-aware: a NaN or inf where the model before had another value is an infinite change (a
    plain ``max(worst, nan)`` would keep ``worst`` and pass a model whose outputs are NaN)."""
    worst, int_changed = 0.0, False
    for b, a in zip(before, after):
        if b.shape != a.shape:
            return float("inf"), True
        if not np.issubdtype(b.dtype, np.floating):
            int_changed |= not np.array_equal(a, b)
            continue
        b64, a64 = b.astype(np.float64), a.astype(np.float64)
        finite = np.isfinite(b64) & np.isfinite(a64)
        same = (b64 == a64) | (np.isnan(b64) & np.isnan(a64))
        if (~finite & ~same).any():
            return float("inf"), int_changed
        diff = np.abs(a64[finite] - b64[finite])
        scale = float(np.abs(b64[finite]).max()) if diff.size else 0.0
        if diff.size:
            worst = max(worst, float(diff.max()) / (scale if scale > 0 else 1.0))
    return worst, int_changed


def _assigned_twice(graph: onnx.GraphProto) -> str | None:
    seen: set[str] = set()
    for node in graph.node:
        for out in node.output:
            if out and out in seen:
                return out
            seen.add(out)
    return None


def check_graph(model: onnx.ModelProto, checker: bool = True, single_assignment: bool = True) -> str | None:
    """Why ``model`` is not a valid graph, or None: a value written by two nodes (when
    ``single_assignment``; without it the rest of the graph rules cannot be told and are
    skipped), an input no node, initializer or graph input defines, a cycle, a graph output
    nothing produces, then ``onnx.checker`` (full check, shape inference included) when ``checker``."""
    graph = model.graph
    twice = _assigned_twice(graph)
    if twice is not None:
        return f"value {twice!r} is written by two nodes" if single_assignment else None
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_by = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name not in defined and name not in produced_by:
                return f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which nothing defines"
    for out in graph.output:
        if out.name not in defined and out.name not in produced_by:
            return f"graph output {out.name!r} is produced by no node"
    # Kahn's algorithm over node dependencies: nodes left over sit on a cycle
    waiting = {id(n): sum(1 for i in n.input if i in produced_by) for n in graph.node}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            if i in produced_by:
                readers.setdefault(i, []).append(n)
    ready = [n for n in graph.node if waiting[id(n)] == 0]
    done = 0
    while ready:
        node = ready.pop()
        done += 1
        for out in node.output:
            for reader in readers.get(out, []):
                waiting[id(reader)] -= 1
                if waiting[id(reader)] == 0:
                    ready.append(reader)
    if done < len(graph.node):
        stuck = next(n for n in graph.node if waiting[id(n)] > 0)
        return f"the graph has a cycle through node {stuck.name or stuck.op_type!r} ({stuck.op_type})"
    if checker and model.ByteSize() < CHECKER_MAX_BYTES:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # ValidationError, InferenceError: both say what is wrong
            text = str(exc).strip().splitlines()
            return f"onnx.checker: {text[0] if text else type(exc).__name__}"
    return None


def run_passes(
    model: onnx.ModelProto,
    passes: Sequence[str] | None = None,
    verify: bool = False,
    inputs: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    options: dict[str, dict] | None = None,
    pipeline: str | None = None,
    checker: bool = True,
    progress: bool = True,
    copy: bool = True,
) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Run ``passes`` (pass or pipeline names) in order, or the passes of ``pipeline`` (default:
    ``default``); returns the model and one report per pass.

    ``options`` maps a pass name to keyword arguments for it (``{"integerize": {"keep_float":
    ["node"]}}``); ``inputs`` replaces the seeded inputs of verify mode. ``checker=False`` holds
    every step to the graph rules only, for callers that run ``onnx.checker`` on the result
    themselves or hand it to a reader with its own ops; ``progress=False`` hides the bar (for callers
that run a pipeline as one step of their own work); ``copy=False`` rewrites ``model`` itself (for
callers that discard it, on a large model the copy is most of the time). The input model must be a valid graph,
    except that a first pass guaranteeing ``single_assignment`` may take values written twice.
    """
    options = options or {}
    names = expand_pipelines(passes) if passes is not None else list(get_pipeline(pipeline or "default"))
    chosen = [get_pass(n) for n in names]
    current = model
    if copy:
        current = onnx.ModelProto()
        current.CopyFrom(model)
    repairs_assignment = bool(chosen) and "single_assignment" in chosen[0].guarantees
    problem = check_graph(current, checker=False, single_assignment=not repairs_assignment)
    if problem:
        raise PassError(f"the input model is not a valid graph: {problem}")
    # a model the checker already rejects is held to the graph rules only
    checked = checker and check_graph(current) is None
    feeds = inputs if inputs is not None else (seeded_inputs(model, seed) if verify else None)
    before = _run(current, feeds) if verify else None
    reports = []
    for p in tqdm(chosen, desc="passes", leave=False, disable=not progress or len(chosen) < 3):
        for prop in sorted(p.requires):
            if not PROPERTIES[prop](current):
                raise PassError(f"pass {p.name!r} requires {prop!r}, which the model does not satisfy; run a pass that guarantees it first")
        exact = verify and _holds("integer_only", current)
        n_before = len(current.graph.node)
        current = p.run(current, **options.get(p.name, {}))
        problem = check_graph(current, checker=checked)
        if problem:
            raise PassError(f"pass {p.name!r} produced an invalid model: {problem}")
        for prop in sorted(p.promised(options.get(p.name, {}))):
            if not PROPERTIES[prop](current):
                raise PassError(f"pass {p.name!r} promised {prop!r} but the model does not satisfy it afterwards")
        change = None
        if verify:
            after = _run(current, feeds)
            change, int_changed = _change(before, after)
            tol = 0.0 if exact else p.tolerance
            if int_changed or not change <= tol:
                if int_changed:
                    what = "integer outputs"
                elif change == float("inf"):
                    what = "outputs: NaN or inf where the model before had finite values"
                else:
                    what = f"outputs by {change:.3g} of their scale (tolerance {tol:g})"
                raise PassError(f"pass {p.name!r} changed the model's {what}")
            before = after
        reports.append(PassReport(p.name, n_before, len(current.graph.node), change))
    return current, reports
