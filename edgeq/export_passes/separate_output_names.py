"""separate_output_names: give back single assignment to a graph whose output names were taken
by inner values.

Asked for an output named like a value it names itself (``embedding``, ``linear``), torch's
exporter writes that name twice. Every producer of an output's name but the last is renamed
(``<name>.inner``, with ``_`` added until free) along with the nodes that read it; the shapes
recorded for those names are dropped (they may be the inner value's).
"""

from __future__ import annotations

import onnx

from edgeq.pass_manager import Pass, register_pass


def separate_output_names(proto: onnx.ModelProto) -> int:
    """Rename the inner writers of output names in place; returns how many."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    producers: dict[str, int] = {}
    for node in graph.node:
        for name in node.output:
            if name in outputs:
                producers[name] = producers.get(name, 0) + 1
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {t.name for t in graph.initializer}
    current: dict[str, str] = {}
    renamed = 0
    for node in graph.node:
        node.input[:] = [current.get(n, n) for n in node.input]
        for i, name in enumerate(node.output):
            if producers.get(name, 0) > 1:
                producers[name] -= 1
                fresh = f"{name}.inner"
                while fresh in taken:
                    fresh += "_"
                taken.add(fresh)
                node.output[i] = current[name] = fresh
                renamed += 1
            elif name in current:
                del current[name]
    if renamed:
        kept = [v for v in graph.value_info if producers.get(v.name) is None]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return renamed


def _run(model: onnx.ModelProto) -> onnx.ModelProto:
    separate_output_names(model)
    return model


register_pass(Pass(
    name="separate_output_names", run=_run, doc=__doc__.splitlines()[0],
    guarantees=frozenset({"single_assignment"}), tolerance=0.0,
))
