"""Benchmark 2 of the low-rank issue: relative Frobenius error of a direct 4-/8-bit quantized
matmul vs LRQMM (rank 8/16/32 residual compensation), with the extra time, on 4096x4096
Gaussian matrices and on real SmolLM2-135M weights with the activations that reach them.

Activation side: A (per-row) and B (per-column) both quantized symmetric; LRQMM adds
E_A B̂ + Â E_B with rank-r R1SVD factors of the residuals, computed at run time.
Weight side (the ``lrqmm`` recipe): W group-wise RTN (g128 asym) + rank-r factors of its residual,
activations in float.

A second table gives each 4-bit residual's singular-value spectrum: the share of its energy
(squared Frobenius norm) that the top 8/16/32 singular directions hold, and the error ratio an
exact rank-32 removal would reach on the residual itself, 1 / sqrt(1 - share32). No rank-32
compensation can beat that ratio by much; where it is near 1 the residual is close to white noise.

    python benchmarks/lowrank_matmul.py [--size 4096] [--threads 1] [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_results, markdown_table  # noqa: E402
from _lowrank_data import best_time, parse_args, rel_error, smollm2_layers  # noqa: E402

from edgeq.quant.lopro import rtn_linear  # noqa: E402
from edgeq.quant.lrqmm import lrqmm_matmul, quantize_rows, quantized_matmul  # noqa: E402
from edgeq.quant.r1svd import r1svd  # noqa: E402

RANKS = (8, 16, 32)


def activation_rows(case, a, b):
    ref = a @ b
    repeats = 1 if a.shape[0] * a.shape[1] * b.shape[1] > 1e9 else 3
    rows = []
    for bits in (4, 8):
        direct, t_direct = best_time(lambda: quantized_matmul(a, b, bits), repeats)
        e_direct = rel_error(direct, ref)
        rows.append([case, "A·B", bits, "direct", f"{e_direct:.3e}", "1.00", f"{t_direct:.3f}", ""])
        for r in RANKS:
            out, t = best_time(lambda: lrqmm_matmul(a, b, bits, r), repeats)
            e = rel_error(out, ref)
            rows.append([case, "A·B", bits, f"LRQMM r{r}", f"{e:.3e}", f"{e_direct / e:.2f}", f"{t:.3f}",
                         f"+{100 * (t - t_direct) / t_direct:.0f}%"])
    return rows


def weight_rows(case, w, x, group):
    ref = x @ w.T
    rows = []
    for bits in (4, 8):
        core = rtn_linear(w, bits, group).dequantized_weight()
        e_direct = rel_error(x @ core.T, ref)
        rows.append([case, f"W g{group}", bits, "RTN", f"{e_direct:.3e}", "1.00", "", ""])
        for r in RANKS:
            lr, t = best_time(lambda: r1svd(w - core, r), 1)
            e = rel_error(x @ core.T + (x @ lr.v.T) @ lr.u.T, ref)
            rows.append([case, f"W g{group}", bits, f"LRQMM r{r}", f"{e:.3e}", f"{e_direct / e:.2f}", f"{t:.3f} (offline)", ""])
    return rows


def spectrum_row(case, residual_name, e):
    s2 = torch.linalg.svdvals(e).square()
    share = [float(s2[:r].sum() / s2.sum()) for r in RANKS]
    return [case, residual_name, *(f"{100 * f:.2f}%" for f in share), f"{(1 - share[-1]) ** -0.5:.3f}"]


def spectrum_rows(case, a, b, w, group):
    """The 4-bit residuals: activation side E_A (A per row), E_B (B per column); weight side W - RTN(W)."""
    rows = [spectrum_row(case, "E_A = A - Q4(A)", a - quantize_rows(a, 4)),
            spectrum_row(case, "E_B = B - Q4(B)", b - quantize_rows(b.T, 4).T)]
    return rows + [spectrum_row(case, f"E_W = W - RTN4 g{group}(W)", w - rtn_linear(w, 4, group).dequantized_weight())]


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv)
    g = torch.Generator().manual_seed(0)
    n = args.size
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    rows = activation_rows(f"Gaussian {n}²", a, b)
    rows += weight_rows(f"Gaussian {n}²", b.T.contiguous(), a[:512], 128)
    spectra = spectrum_rows(f"Gaussian {n}²", a, b, b.T.contiguous(), 128)
    del a, b
    for name, (w, x) in smollm2_layers().items():
        short = name.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "")
        case, group = f"SmolLM2 {short} {tuple(w.shape)}", 64 if w.shape[1] % 128 else 128
        rows += activation_rows(case, x, w.T.contiguous())
        rows += weight_rows(case, w, x, group)
        spectra += spectrum_rows(case, x, w.T.contiguous(), w, group)
    headers = ["matrices", "quantized", "bits", "method", "rel. Frobenius error", "error ÷", "time s", "extra time"]
    spectrum_headers = ["matrices", "4-bit residual", *(f"energy in top {r}" for r in RANKS), "best rank-32 error ÷"]
    if args.json:
        print(json.dumps({"matmul": [dict(zip(headers, r)) for r in rows],
                          "spectrum": [dict(zip(spectrum_headers, r)) for r in spectra]}, indent=1))
    table = markdown_table(headers, rows) + "\n\n" + markdown_table(spectrum_headers, spectra)
    print(table)
    if not args.no_record:
        append_results("Low-rank: LRQMM matmul error vs direct quantized matmul", table, NOTES + "\n" + summary(rows, spectra))


def summary(rows, spectra) -> str:
    """The "Done when" figure (4-bit, rank 32, Gaussian case) and why it lands where it does."""
    gauss = rows[0][0]
    cut = {r[1]: r[5] for r in rows if r[0] == gauss and r[2] == 4 and r[3] == f"LRQMM r{RANKS[-1]}"}
    held = "; ".join(f"{r[1]}: {r[4]} (at best {r[5]}×)" for r in spectra if r[0] == gauss)
    return (f"{gauss}, 4 bits, rank {RANKS[-1]}: LRQMM divides the error by {' (activation side), '.join(cut.values())} "
            f"(weight side); the issue asks 10×. The top {RANKS[-1]} singular directions of the 4-bit residuals hold "
            f"{held}. Rounding noise on a Gaussian matrix is close to white: its singular values fill a "
            f"Marchenko-Pastur bulk, whose top r of n directions hold at most about 4r/n of the energy "
            f"({400 * RANKS[-1] / int(gauss.split()[1].rstrip('²')):.1f}% for r={RANKS[-1]}), so no rank-{RANKS[-1]} correction "
            f"can cut the error 10×: that takes removing 99% of the residual's energy, i.e. a rank near n.")


NOTES = """Error = |Ĉ - C|_F / |C|_F against the float32 product. "error ÷" = direct error / LRQMM error.
Activation-side rows quantize both operands (A per row, B per column, symmetric) and compensate
both residuals with rank-r R1SVD factors (2 power iterations) computed at run time; the time is
the whole quantized product (fake-quant in float32 plus the compensation), best of 3 runs
(one run for 4096²).
Weight-side rows quantize only W (asymmetric RTN, group 128, or 64 where 128 does not divide)
and add the rank-r factors of its residual (computed offline: the time is R1SVD's)."""


if __name__ == "__main__":
    main()
