"""Numerics of an executor's outputs against the reference's.

Metrics per output: max abs error, max error relative to the reference's scale (max |ref|),
cosine similarity, top-1 agreement along the last axis (for logits), and for integer outputs
the count of mismatching elements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from edgeq.runtime.executors import Executor


@dataclass
class Numerics:
    executor: str
    max_abs: float
    max_rel: float  # max |out - ref| / max |ref|
    cosine: float
    top1_agreement: float | None
    int_mismatches: int | None
    elements: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(executor: str, ref: np.ndarray, out: np.ndarray) -> Numerics:
    if ref.shape != out.shape:
        raise ValueError(f"{executor}: output shape {out.shape} differs from the reference's {ref.shape}")
    r = ref.astype(np.float64).ravel()
    o = out.astype(np.float64).ravel()
    diff = np.abs(r - o)
    scale = float(np.abs(r).max()) if r.size else 0.0
    denom = float(np.linalg.norm(r) * np.linalg.norm(o))
    cosine = float(r @ o / denom) if denom > 0 else float(np.array_equal(r, o))
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] > 1 and np.issubdtype(ref.dtype, np.floating):
        top1 = float((ref.argmax(-1) == out.argmax(-1)).mean())
    mism = int((ref != out).sum()) if np.issubdtype(ref.dtype, np.integer) else None
    return Numerics(
        executor=executor,
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(diff.max() / scale) if scale > 0 else float(diff.max() if diff.size else 0.0),
        cosine=cosine,
        top1_agreement=top1,
        int_mismatches=mism,
        elements=int(r.size),
    )


def validate(reference: Executor, executors: Sequence[Executor], inputs: Sequence[np.ndarray]) -> list[Numerics]:
    """Run every executor on ``inputs`` and compare its first output with the reference's."""
    ref = reference.run(inputs)[0]
    return [compare(ex.name, ref, ex.run(inputs)[0]) for ex in executors]
