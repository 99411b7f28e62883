"""Executors: run an artifact with one call, ``executor.run(inputs) -> list of numpy arrays``.

``TorchExecutor`` is the reference; ``OrtExecutor`` runs an ONNX file; ``TvmExecutor`` runs a
compiled artifact on this host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgeq.errors import RuntimeExecError, first_line
from edgeq.runtime.ort import ACCURACY_VALIDATE, ort_session

Inputs = Sequence[np.ndarray]


class Executor:
    name: str = "executor"

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        raise NotImplementedError


class TorchExecutor(Executor):
    """The PyTorch reference: the (quantized) module itself."""

    name = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.model(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().cpu().numpy() for o in outs]


class OrtExecutor(Executor):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, accuracy_level: int = ACCURACY_VALIDATE, threads: int | None = None):
        self.path = Path(onnx_path)
        self.session = ort_session(onnx_path, accuracy_level=accuracy_level, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        try:
            return self.session.run(None, dict(zip(self.input_names, inputs)))
        except Exception as exc:
            raise RuntimeExecError(f"onnxruntime failed on {self.path}: {first_line(exc)}") from None


class TvmExecutor(Executor):
    """A compiled Relax artifact (``edgeq.compile``) run by TVM's VM on this host."""

    name = "tvm"

    def __init__(self, artifact_path: str | Path, entry: str = "main", threads: int | None = None):
        import tvm
        from tvm import relax

        from edgeq.runtime.threads import configure_tvm_threads
        from edgeq.targets.compile import Artifact

        self.artifact = Artifact.load(artifact_path)
        self.threads = configure_tvm_threads(threads)
        self._tvm = tvm
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(self.artifact.path)), self.device)
        self.entry = entry

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        tvm = self._tvm
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        try:
            out = self.vm[self.entry](*args)
        except Exception as exc:
            raise RuntimeExecError(f"TVM failed on {self.artifact.path}: {first_line(exc)}") from None
        return _flatten_tvm(out)


def _flatten_tvm(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result: list[np.ndarray] = []
    for item in out:
        result.extend(_flatten_tvm(item))
    return result


def executor_for(artifact: str | Path) -> Executor:
    """The executor that runs ``artifact``: onnxruntime for ``.onnx``, TVM for a compiled library."""
    path = Path(artifact)
    if path.suffix == ".onnx":
        return OrtExecutor(path)
    return TvmExecutor(path)
