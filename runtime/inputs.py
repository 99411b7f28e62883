"""Inputs for validation and profiling: given arrays (.npy, .npz), the built-in digits test
set, or seeded random arrays shaped and typed from the ONNX model's inputs (the one
random-input helper, ``edgeq._inputs.random_inputs``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgeq._inputs import onnx_inputs, random_inputs
from edgeq.errors import ModelFileError


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
    if source == "random":  # dynamic dims from ``dims`` (by name) or 1
        return list(random_inputs(model, seed=seed, dims=dims).values())
    arrays = file_inputs(source, model)
    return [a[:samples] for a in arrays] if samples else arrays
