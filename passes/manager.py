"""The pass manager: named ONNX-to-ONNX passes, what each requires and guarantees, a default
pipeline, and a verify mode.

A pass declares properties (names in ``PROPERTIES``, each a predicate on the model) that must
hold before it runs (``requires``) and that hold after it (``guarantees``); the manager checks
both, so a pass that breaks its promise is named. In verify mode the manager runs the model on
onnxruntime before and after every pass, on seeded (or given) inputs, and stops at the first
pass that changes the outputs beyond that pass's tolerance, naming it. Integer outputs, and
every output of an integer-only graph, must stay bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from edgeq._inputs import random_inputs
from edgeq.errors import PassError


def _has_no(op_type: str) -> Callable[[onnx.ModelProto], bool]:
    return lambda model: all(n.op_type != op_type for n in model.graph.node)


def _integer_only(model: onnx.ModelProto) -> bool:
    from edgeq.passes.integer_check import float_ops_in_integer_region, has_integer_region

    return has_integer_region(model) and not float_ops_in_integer_region(model)


def _qdq(model: onnx.ModelProto) -> bool:
    inputs = {i.name for i in model.graph.input}
    return any(n.op_type == "QuantizeLinear" and n.input[0] in inputs for n in model.graph.node)


def _no_dead_nodes(model: onnx.ModelProto) -> bool:
    from edgeq.passes.dead_nodes import remove_dead_nodes

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return len(remove_dead_nodes(copy).graph.node) == len(model.graph.node)


PROPERTIES: dict[str, Callable[[onnx.ModelProto], bool]] = {
    "qdq": _qdq,  # activations quantized by QuantizeLinear from the graph input on
    "integer_only": _integer_only,  # no float op between the input Q and the output DQ
    "no_batchnorm": _has_no("BatchNormalization"),
    "no_dead_nodes": _no_dead_nodes,
}


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
CHECKER_MAX_BYTES = (1 << 31) - (1 << 20)  # onnx.checker takes a model proto only below protobuf's 2 GiB
DEFAULT_PIPELINE = ("constant_folding", "fold_batchnorm", "fold_scales", "fold_rotations", "dead_nodes")


def register_pass(p: Pass) -> Pass:
    unknown = (p.requires | p.guarantees) - set(PROPERTIES)
    if unknown:
        raise PassError(f"pass {p.name!r} names unknown properties {sorted(unknown)}")
    _PASSES[p.name] = p
    return p


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def pass_names() -> list[str]:
    return sorted(_PASSES)


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


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from edgeq.runtime.ort import ort_session  # verify mode only: passes do not need a runtime

    return ort_session(model.SerializeToString()).run(None, feeds)


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


def check_graph(model: onnx.ModelProto, checker: bool = True) -> str | None:
    """Why ``model`` is not a valid graph, or None: an input no node, initializer or graph input
    defines, a cycle, a graph output nothing produces, then ``onnx.checker`` (full check, shape
    inference included) when ``checker``."""
    graph = model.graph
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
    passes: Sequence[str] = DEFAULT_PIPELINE,
    verify: bool = False,
    inputs: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    options: dict[str, dict] | None = None,
) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Run ``passes`` in order; returns the model and one report per pass.

    ``options`` maps a pass name to keyword arguments for it (``{"integerize": {"keep_float":
    ["node"]}}``); ``inputs`` replaces the seeded inputs of verify mode.
    """
    options = options or {}
    chosen = [get_pass(n) for n in passes]
    current = onnx.ModelProto()
    current.CopyFrom(model)
    problem = check_graph(current, checker=False)
    if problem:
        raise PassError(f"the input model is not a valid graph: {problem}")
    checked = check_graph(current) is None  # a model the checker already rejects is held to the graph rules only
    feeds = inputs if inputs is not None else (seeded_inputs(model, seed) if verify else None)
    before = _run(current, feeds) if verify else None
    reports = []
    for p in tqdm(chosen, desc="passes", leave=False, disable=len(chosen) < 3):
        for prop in sorted(p.requires):
            if not PROPERTIES[prop](current):
                raise PassError(f"pass {p.name!r} requires {prop!r}, which the model does not satisfy; run a pass that guarantees it first")
        exact = verify and _integer_only(current)
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
