"""The one random-input helper: seeded arrays shaped and typed from an ONNX model's inputs, used
to verify passes (``edgeq.passes``) and to validate and profile artifacts (``edgeq.runtime``).

Symbolic dimensions take their size from ``dims`` by name, else ``default_dim``; floats are
standard normal, integers uniform in [0, int_high), booleans all True (a mask that keeps all).
"""

from __future__ import annotations

import numpy as np
import onnx


def onnx_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype, list[int | str]]]:
    """(name, dtype, shape with dim names for dynamic dims) of the graph inputs that are not weights."""
    weights = {i.name for i in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in weights:
            continue
        t = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        out.append((v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), shape))
    return out


def random_inputs(model: onnx.ModelProto, seed: int = 0, dims: dict[str, int] | None = None, int_high: int = 100,
                  default_dim: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, by name, in graph order (see the module docstring)."""
    return random_arrays(onnx_inputs(model), seed=seed, dims=dims, int_high=int_high, default_dim=default_dim)


def random_arrays(specs, seed: int = 0, dims: dict[str, int] | None = None, int_high: int = 100,
                  default_dim: int = 1) -> dict[str, np.ndarray]:
    """Seeded arrays for ``specs`` (name, dtype, shape with dim names), by name, in order: the
    rule of :func:`random_inputs`, for inputs described elsewhere (a compiled artifact's metadata)."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for name, dtype, shape in specs:
        dtype = np.dtype(dtype)
        concrete = [d if isinstance(d, int) else int(dims.get(d, default_dim)) for d in shape]
        if dtype == np.bool_:
            feeds[name] = np.ones(concrete, bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, int_high, size=concrete).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
    return feeds
