"""Where an ONNX file's external data may live: inside the model's folder, nowhere else.

A location is a path the file's author wrote. ``../x``, an absolute path, or a symlink that
leads out of the folder would make edgeq read (``edgeq inspect`` report the size of, a compile
embed) a file the user never handed over, so every location is checked before any is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx

from edgeq.errors import ModelFileError


def external_data_files(model: onnx.ModelProto, model_path: str | Path) -> dict[str, Path]:
    """Tensor name -> the file holding its data, for every tensor stored outside ``model_path``;
    a ModelFileError naming the tensor and the location when that file is not inside the
    model's folder."""
    folder = Path(os.path.abspath(model_path)).parent.resolve()
    files = {}
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"{model_path}: tensor {tensor.name!r} keeps its data at {location!r}"
        if not location:
            raise ModelFileError(f"{where}: no location given")
        if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
            raise ModelFileError(f"{where}, an absolute path: external data must be inside the model's folder {folder}")
        resolved = (folder / location).resolve()
        if not resolved.is_relative_to(folder):
            raise ModelFileError(f"{where}, which leads to {resolved}, outside the model's folder {folder}")
        files[tensor.name] = resolved
    return files


def _tensors(model: onnx.ModelProto):
    """Every tensor of the model: initializers and node attributes, in subgraphs and functions too."""

    def in_graph(graph: onnx.GraphProto):
        yield from graph.initializer
        yield from (s.values for s in graph.sparse_initializer)
        for node in graph.node:
            yield from in_nodes([node])

    def in_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from in_graph(attr.g)
                for g in attr.graphs:
                    yield from in_graph(g)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)
