"""Inputs for validation and profiling: given arrays (.npy, .npz), the built-in digits test
set, or seeded random arrays shaped and typed from the ONNX model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgeq.errors import ModelFileError


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


def random_inputs(model: onnx.ModelProto, seed: int = 0, dims: dict[str, int] | None = None, int_high: int = 100) -> list[np.ndarray]:
    """Seeded random inputs: standard normal floats, integers in [0, int_high); dynamic dims from
    ``dims`` (by name) or 1."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    arrays = []
    for _, dtype, shape in onnx_inputs(model):
        concrete = [d if isinstance(d, int) else int(dims.get(d, 1)) for d in shape]
        if np.issubdtype(dtype, np.integer):
            arrays.append(rng.integers(0, int_high, size=concrete).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, size=concrete).astype(bool))
        else:
            arrays.append(rng.standard_normal(concrete).astype(dtype))
    return arrays


def digits_inputs(samples: int | None = None) -> list[np.ndarray]:
    """The built-in digits test images (450 x 1 x 8 x 8 float32), the first ``samples`` of them."""
    from edgeq.models.digits_cnn import digits_data

    x = digits_data().x_test.numpy()
    return [x[:samples] if samples else x]


def file_inputs(path: str | Path, model: onnx.ModelProto) -> list[np.ndarray]:
    """Arrays from a .npy file (the single input) or a .npz file (by input name, else in order)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such input file")
    names = [name for name, _, _ in onnx_inputs(model)]
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable .npy/.npz file ({type(exc).__name__})") from None
    if isinstance(data, np.ndarray):
        arrays = [data]
    else:
        keys = list(data.keys())
        arrays = [data[n] for n in names] if set(names) <= set(keys) else [data[k] for k in keys]
    if len(arrays) != len(names):
        raise ModelFileError(f"{path}: holds {len(arrays)} arrays, the model takes {len(names)} inputs ({', '.join(names)})")
    return arrays


def load_inputs(source: str, model: onnx.ModelProto, samples: int | None = None, seed: int = 0,
                dims: dict[str, int] | None = None) -> list[np.ndarray]:
    """``digits``, ``random``, or a .npy/.npz path."""
    if source == "digits":
        return digits_inputs(samples)
    if source == "random":
        return random_inputs(model, seed=seed, dims=dims)
    arrays = file_inputs(source, model)
    return [a[:samples] for a in arrays] if samples else arrays
