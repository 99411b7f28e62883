"""Find the first node where an executor's numbers leave the trusted executor's.

Both graphs get every node output added as a graph output; onnxruntime runs the trusted graph,
the suspect executor runs its graph (onnxruntime on another ONNX file, or the graph recompiled
with TVM for the suspect artifact's target, locally or on the device), and the tensors are
compared in the suspect graph's topological order. The first tensor beyond tolerance names the
node that produced it: every tensor before it agreed, so its inputs agreed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from edgeq.runtime.validate import Numerics, Tolerance, compare

RunGraph = Callable[[onnx.ModelProto], dict[str, np.ndarray]]


@dataclass
class Divergence:
    node: str
    op_type: str
    output: str
    numerics: Numerics
    tensors_checked: int

    def to_dict(self) -> dict:
        return {**asdict(self), "numerics": self.numerics.to_dict()}

    def describe(self) -> str:
        n = self.numerics
        detail = f"{n.int_mismatches} of {n.elements} integers differ" if n.int_mismatches else f"max rel error {n.max_rel:.3g}, cosine {n.cosine:.4f}"
        return f"first diverging node: {self.node} ({self.op_type}), output {self.output!r}: {detail} ({self.tensors_checked} tensors checked)"


def expose_intermediates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str, str]]]:
    """A copy of ``model`` whose graph outputs include every top-level node's outputs.

    Returns the copy and (node name, op type, output name) in topological order. Types come from shape
    inference where it knows them (TVM's importer and onnxruntime both accept untyped outputs).
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(exposed).graph
        types = {v.name: v for v in [*inferred.value_info, *inferred.output]}
    except Exception:
        types = {}
    graph = exposed.graph
    present = {o.name for o in graph.output}
    pairs: list[tuple[str, str, str]] = []
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            pairs.append((node.name or f"node #{index}", node.op_type, name))
            if name in present:
                continue
            graph.output.append(types[name] if name in types else onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    return exposed, pairs


def ort_runner(inputs: Sequence[np.ndarray]) -> RunGraph:
    """Run a graph on onnxruntime (numerics options stated, see ``ort_session``)."""

    def run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        from edgeq.runtime.ort import ort_session

        session = ort_session(model.SerializeToString())
        names = [i.name for i in session.get_inputs()]
        outs = session.run(None, dict(zip(names, inputs)))
        return dict(zip([o.name for o in session.get_outputs()], outs))

    return run


def tvm_runner(inputs: Sequence[np.ndarray], target: str, device_url: str | None = None) -> RunGraph:
    """Compile a graph with TVM for ``target`` and run it here, or on the device at ``device_url``."""

    def run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        from edgeq.runtime.executors import TvmExecutor
        from edgeq.runtime.device import is_harness_device
        from edgeq.runtime.kernel_harness import HarnessExecutor
        from edgeq.runtime.rpc import RpcExecutor
        from edgeq.targets.compile import compile as compile_onnx

        with tempfile.TemporaryDirectory(prefix="edgeq-localize-") as tmp:
            path = Path(tmp) / "exposed.onnx"
            onnx.save(model, str(path))
            artifact = compile_onnx(path, target=target, out_dir=tmp)
            if device_url and is_harness_device(device_url):
                ex = HarnessExecutor(artifact.path, device_url)
            else:
                ex = RpcExecutor(artifact.path, device_url) if device_url else TvmExecutor(artifact.path)
            try:
                outs = ex.run(inputs)
            finally:
                if device_url:
                    ex.close()
        return dict(zip([o.name for o in model.graph.output], outs))

    return run


def first_divergence(
    trusted: onnx.ModelProto,
    suspect: onnx.ModelProto,
    run_suspect: RunGraph,
    inputs: Sequence[np.ndarray],
    tolerance: Tolerance,
) -> Divergence | None:
    """The first node (topological order of ``suspect``) whose output leaves the trusted run's.

    Intermediate integer tensors are held bit-exact in graphs with integer outputs or under
    ``tolerance.exact``; in a quantized float graph they may differ by one rounding step (see
    ``Tolerance.accepts``).
    """
    exact = tolerance.int_exact and tolerance.exact or tolerance.int_exact and all(
        np.issubdtype(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)), np.integer)
        for o in suspect.graph.output
    )
    tolerance = dataclasses.replace(tolerance, int_exact=exact)
    trusted_exposed, _ = expose_intermediates(trusted)
    suspect_exposed, pairs = expose_intermediates(suspect)
    want = ort_runner(inputs)(trusted_exposed)
    got = run_suspect(suspect_exposed)
    checked = 0
    for node, op_type, name in pairs:
        if name not in want or name not in got:
            continue
        checked += 1
        ref, out = np.asarray(want[name]), np.asarray(got[name])
        if ref.shape != out.shape:
            numerics = Numerics(name, float("inf"), float("inf"), 0.0, None, None, int(ref.size))
        else:
            numerics = compare(name, ref, out)
        if not tolerance.accepts(numerics, final=False):
            return Divergence(node, op_type, name, numerics, checked)
    return None
