"""Executors: run an artifact with one call, ``executor.run(inputs) -> list of numpy arrays``.

``TorchExecutor`` is the reference; ``OrtExecutor`` runs an ONNX file; ``TvmExecutor`` runs a
compiled artifact on this host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edgeq.errors import ModelFileError, RuntimeExecError, first_line
from edgeq.runtime.ort import ACCURACY_VALIDATE, ort_session

Inputs = Sequence[np.ndarray]


class Executor:
    name: str = "executor"

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        raise NotImplementedError


def run_once(make: Callable[[], Executor], inputs: Inputs) -> tuple[Executor, list[np.ndarray]]:
    """(executor, its outputs): one executor made, run on ``inputs`` and closed (an RPC or harness
    session holds a device until then)."""
    executor = make()
    try:
        return executor, executor.run(inputs)
    finally:
        if hasattr(executor, "close"):
            executor.close()


class TorchExecutor(Executor):
    """The PyTorch reference: the (quantized) module itself."""

    name = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        from edgeq.tasks import wrap

        args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)
        with torch.no_grad():  # the outputs the export keeps for this model's task (edgeq.tasks)
            out = wrap(self.model, args).module(*args)
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
        check_shared_library(self.artifact.path)
        try:
            library = tvm.runtime.load_module(str(self.artifact.path))
            self.vm = relax.VirtualMachine(library, self.device)
        except Exception as exc:  # a truncated or foreign file: TVM's loader says why in its first line
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFileError(f"{self.artifact.path}: not a loadable TVM artifact ({why})") from None
        self.entry = entry

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        tvm = self._tvm
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        try:
            out = self.vm[self.entry](*args)
        except Exception as exc:
            raise RuntimeExecError(f"TVM failed on {self.artifact.path}: {first_line(exc)}") from None
        return flatten_tvm_outputs(out)


# ELF e_machine by the names targets use (registry ``machine``) and platform.machine() gives
ELF_MACHINES = {"x86-64": 62, "x86_64": 62, "aarch64": 183, "arm": 40, "armv7l": 40, "hexagon": 164}
# ELF class -> (struct format of the header fields used, of a program header's offset and size)
_ELF_LAYOUT = {1: ("<HH4xIIIIHHHHHH", "<4xI8xI"), 2: ("<HH4xQQQIHHHHHH", "<8xQ16xQ")}


def check_shared_library(path: Path, machine: str | None = None) -> None:
    """A ModelFileError unless ``path`` is a whole little-endian ELF shared library for
    ``machine`` (a target's ``machine`` name; default: this host).

    dlopen maps the segments the ELF headers promise: a truncated file then dies with SIGBUS
    inside the loader (here, or in the device's server), which no ``except`` catches. So the
    headers are checked against the file's size before TVM loads or uploads it."""
    import platform
    import struct

    machine = machine or platform.machine()

    def refuse(why: str) -> ModelFileError:
        return ModelFileError(f"{path}: not a loadable TVM artifact ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in _ELF_LAYOUT or head[5] != 1:
            raise refuse("not a little-endian ELF library")
        header, segment = _ELF_LAYOUT[head[4]]
        if len(head) < 16 + struct.calcsize(header):
            raise refuse("truncated ELF header")
        e_type, e_machine, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack_from(header, head, 16)
        want = ELF_MACHINES.get(machine)
        if e_type != 3 or (want is not None and e_machine != want):
            raise refuse(f"ELF type {e_type}, machine {e_machine}: not a shared library for {machine}")
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size or phentsize < struct.calcsize(segment):
            raise refuse("truncated: its headers lie past the end")
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for i in range(phnum):
        offset, filesz = struct.unpack_from(segment, table, i * phentsize)
        if offset + filesz > size:
            raise refuse(f"truncated: segment {i} ends at byte {offset + filesz}, the file has {size}")


def flatten_tvm_outputs(out) -> list[np.ndarray]:
    """A TVM function's result (a tensor, or nested tuples of them) as a flat list of arrays."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result: list[np.ndarray] = []
    for item in out:
        result.extend(flatten_tvm_outputs(item))
    return result


def artifact_of(executor: Executor) -> str:
    """The file an executor runs (an ONNX file or a compiled artifact), else its name."""
    path = getattr(executor, "path", None) or getattr(getattr(executor, "artifact", None), "path", None)
    return str(path) if path else executor.name


def executor_output_names(executor: Executor, count: int) -> list[str]:
    """The graph's output names as the executor knows them (onnxruntime's session, a compiled
    artifact's metadata), else ``output0``, ``output1``, ..."""
    session = getattr(executor, "session", None)
    if hasattr(session, "get_outputs"):
        names = [o.name for o in session.get_outputs()]
    else:
        names = [o["name"] for o in getattr(getattr(executor, "artifact", None), "outputs", None) or []]
    return names if len(names) == count else [f"output{i}" for i in range(count)]


def executor_for(artifact: str | Path) -> Executor:
    """The executor that runs ``artifact``: onnxruntime for ``.onnx``, TVM for a compiled library."""
    path = Path(artifact)
    if path.suffix == ".onnx":
        return OrtExecutor(path)
    return TvmExecutor(path)
