"""Numerics of an executor's outputs against the reference's.

Metrics per output: max abs error, max error relative to the reference's scale (max |ref|),
cosine similarity, top-1 agreement along the last axis (for logits), and for integer outputs
the count of mismatching elements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class Numerics:
    executor: str
    max_abs: float
    max_rel: float  # max |out - ref| / max |ref|
    cosine: float
    top1_agreement: float | None
    int_mismatches: int | None
    elements: int
    mismatches: int | None = None  # elements not exactly equal (any dtype; NaN equals NaN)
    output: str | None = None  # the graph output compared, when the model has several
    nonfinite_mismatches: int = 0  # NaN/inf where the reference has another value (errors are then inf)

    def to_dict(self) -> dict:
        return asdict(self)


ROUNDING_FLIPS = 0.01  # fraction of an intermediate integer tensor allowed one step off


@dataclass(frozen=True)
class Tolerance:
    """When an executor agrees with the reference.

    Float tensors: max error within ``max_rel`` of the reference's largest magnitude and cosine
    at least ``min_cosine``; the final outputs also need top-1 agreement of ``min_top1`` (a
    quantized graph computed in another summation order may move a value across a rounding
    boundary, one quantization step, which flips a near-tie). Integer tensors: no mismatch at
    all, unless ``int_exact`` is off, then they are held to ``max_rel`` like floats. ``exact``:
    every element equal, whatever the dtype (an integer-only graph's dequantized outputs: equal
    floats mean equal integers).
    """

    max_rel: float = 0.02
    min_cosine: float = 0.999
    min_top1: float = 0.99
    int_exact: bool = True
    exact: bool = False

    def accepts(self, n: "Numerics", final: bool = True) -> bool:
        if self.exact and final:
            return n.mismatches == 0
        if n.int_mismatches is not None and self.int_exact:
            return n.int_mismatches == 0
        if n.int_mismatches is not None and not final:
            # An intermediate integer tensor of a quantized float graph: summation order moves
            # a few values across a rounding boundary, one step each.
            return n.max_abs <= 1 and n.int_mismatches <= ROUNDING_FLIPS * n.elements
        if n.nonfinite_mismatches:
            return False
        if not (n.max_rel <= self.max_rel) or not (n.cosine >= self.min_cosine or math.isclose(n.max_abs, 0.0)):
            return False
        return not (final and n.top1_agreement is not None and n.top1_agreement < self.min_top1)


def compare(executor: str, ref: np.ndarray, out: np.ndarray, output: str | None = None) -> Numerics:
    if ref.shape != out.shape:
        what = f"output {output!r}" if output else "output"
        raise ValueError(f"{executor}: {what} shape {out.shape} differs from the reference's {ref.shape}")
    r = ref.astype(np.float64).ravel()
    o = out.astype(np.float64).ravel()
    # NaN and inf compare by position and value: one where the reference has another value makes
    # the errors inf (np.max would give nan, and max(0.0, nan) is 0.0: a silent pass)
    same = (r == o) | (np.isnan(r) & np.isnan(o))
    finite = np.isfinite(r) & np.isfinite(o)
    nonfinite = int((~finite & ~same).sum())
    r_f, o_f = r[finite], o[finite]
    diff = np.abs(r_f - o_f)
    scale = float(np.abs(r_f).max()) if r_f.size else 0.0
    max_abs = float("inf") if nonfinite else (float(diff.max()) if diff.size else 0.0)
    denom = float(np.linalg.norm(r_f) * np.linalg.norm(o_f))
    cosine = float(r_f @ o_f / denom) if denom > 0 else float(np.array_equal(r_f, o_f))
    if nonfinite:
        cosine = float("nan")
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] > 1 and np.issubdtype(ref.dtype, np.floating):
        top1 = float((ref.argmax(-1) == out.argmax(-1)).mean())
    mism = int((ref != out).sum()) if np.issubdtype(ref.dtype, np.integer) else None
    return Numerics(
        executor=executor,
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else max_abs,
        cosine=cosine,
        top1_agreement=top1,
        int_mismatches=mism,
        elements=int(r.size),
        mismatches=int((~same).sum()),
        output=output,
        nonfinite_mismatches=nonfinite,
    )


def compare_outputs(executor: str, refs: Sequence[np.ndarray], outs: Sequence[np.ndarray],
                    names: Sequence[str]) -> list[Numerics]:
    """One Numerics per graph output (every output, in graph order)."""
    if not (len(refs) == len(outs) == len(names)):
        raise ValueError(f"{executor}: {len(outs)} outputs, the reference has {len(refs)} and the graph {len(names)}")
    label = len(names) > 1
    return [compare(executor, r, o, name if label else None) for r, o, name in zip(refs, outs, names)]
