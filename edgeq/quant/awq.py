"""AWQ-style activation-aware scaling of a decoder's linears, folded exactly into the float model.

A few input channels of a linear carry much larger activations than the rest; rounding the
weights that multiply them costs most of the output error. AWQ (Lin et al., 2023) scales those
weight columns up before quantizing and the activations down by the same factor:

    y = W x = (W diag(s)) (diag(s)⁻¹ x),   s = mean|x|^α / sqrt(max · min)   (per input channel)

so the grid of ``W diag(s)`` spends more of its levels on the salient columns. ``α`` is searched
on ``0, 1/grid, ..., 1`` per group of linears that read the same input, minimizing the group's
output error on calibration activations, ``Σ_readers tr(ΔW H ΔWᵀ)`` with ``H = Σ x xᵀ`` and
``ΔW = Q(W diag(s)) diag(s)⁻¹ - W`` (``Q``: round to nearest on the recipe's grid, as AWQ
searches; α = 0 is s = 1, plain RTN, so the search never does worse on that measure).

``diag(s)⁻¹`` is folded into whatever writes the group's input, so the model computes the same
function in float (to float32 rounding) and needs nothing new at export:

* q/k/v (or Phi-3's fused qkv) after the attention norm, gate/up (or fused gate_up) after the MLP
  norm: the norm's weight ``γ / s`` (Gemma's ``(1 + γ)`` form: ``γ' = (1 + γ) / s - 1``), and its
  bias ``β / s`` where it has one (GPT-2's LayerNorm);
* down_proj: up_proj's output rows (the up half of a fused gate_up) ``/ s``: ``act(gate) · up``
  is linear in up. GPT-2's ``c_fc → GELU → c_proj`` has no such site: skipped;
* o_proj: the value rows of v_proj (or of a fused qkv) ``/ s``, only when every query head has
  its own value head (with grouped-query attention a value channel feeds several heads' o_proj
  columns: skipped, as AWQ's reference does);
* a reader that is not a plain ``nn.Linear`` (down_proj after a Hadamard rotation sits behind an
  online Hadamard) is skipped, saying so.

Decoders are processed block by block on float inputs (the AWQ reference's choice): each block's
statistics come from the float outputs of the block before, which the exact fold leaves as they
were. The architecture facts (norms, projections, fused layers) come from
``edgeq.quant.architectures``; anything else is refused with an ArchitectureError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from edgeq.errors import QuantizationError
from edgeq.maths.groups import quantize_groups, resolve_group_size
from edgeq.quant.architectures import DecoderArchitecture, NormForm, architecture_of, attention_shape
from edgeq.quant.base import capture_block_inputs, hf_conv1d_as_linear, is_skipped, run_module
from edgeq.quant.gptq import HessianAccumulator
from edgeq.recipes import Recipe


@dataclass
class AwqGroup:
    """One group of linears sharing an input: its readers (full names), where ``1/s`` was folded,
    the α found and its scales ``s`` [in] (None with ``skipped`` saying why), and the group's
    calibration output error with plain RTN (α = 0) and with the scales."""

    readers: tuple[str, ...]
    fold_site: str
    alpha: float | None = None
    scales: torch.Tensor | None = None
    rtn_error: float | None = None
    error: float | None = None
    skipped: str | None = None


@dataclass
class _Site:
    """What one group scales: its readers' weights on the input side, and the writer of that
    input on its output side (a norm, or some rows of a linear)."""

    readers: list[nn.Linear]
    reader_names: tuple[str, ...]
    fold_site: str
    norm: nn.Module | None = None
    writer: nn.Linear | None = None
    writer_rows: slice | None = None
    skipped: str | None = None


def apply_awq(model: nn.Module, batches: list, bits: int, group_size: int | None, *, symmetric: bool = False,
              group_fallback: bool = True, grid: int = 20, skip: tuple[str, ...] = ()) -> dict[str, AwqGroup]:
    """Search and fold AWQ scales into ``model`` in place (see the module docstring).

    ``batches``: calibration input-id batches (tensors); ``bits``/``group_size``/``symmetric``/
    ``group_fallback``: the grid the search rounds to (the recipe's own); ``grid``: α steps;
    ``skip``: fnmatch patterns of layers that stay float (not counted in a group's error; a group
    with every reader skipped is left alone). Returns the groups by their readers' names joined
    with ``+``. The model's function is unchanged up to float rounding; call it on the float model
    before quantizing it.
    """
    if not batches:
        raise QuantizationError("AWQ needs calibration data for its activation statistics: pass calib=<sample inputs>")
    if grid < 1:
        raise QuantizationError(f"AWQ's α grid needs at least one step, got {grid}")
    arch = architecture_of(model, "AWQ scaling")
    if arch.conv1d:
        hf_conv1d_as_linear(model, Recipe())
    # many small matmuls: one thread avoids OpenMP spin-waits on a loaded machine (as GPTQ's column loop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _search_and_fold(model, arch, batches, bits, group_size, symmetric, group_fallback, grid, skip)
    finally:
        torch.set_num_threads(threads)


def _search_and_fold(model, arch, batches, bits, group_size, symmetric, group_fallback, grid, skip) -> dict[str, AwqGroup]:
    blocks = arch.blocks(model)
    kept = Recipe(skip=skip)  # the layers the recipe leaves in float, matched as it matches them
    found: dict[str, AwqGroup] = {}
    captured = capture_block_inputs(model, blocks[0], batches)
    hidden, kwargs = [h for h, _ in captured], [k for _, k in captured]
    for index, block in enumerate(tqdm(blocks, desc="awq", leave=False)):
        prefix = f"{arch.layers}.{index}."
        sites = _sites(model, arch, block, prefix)
        stats = _input_statistics(block, [s for s in sites if s.skipped is None], hidden, kwargs)
        for site in sites:
            key = "+".join(site.reader_names)
            if site.skipped is not None:
                found[key] = AwqGroup(site.reader_names, site.fold_site, skipped=site.skipped)
                continue
            counted = [(name, lin) for name, lin in zip(site.reader_names, site.readers) if not is_skipped(name, kept)]
            if not counted:
                found[key] = AwqGroup(site.reader_names, site.fold_site, skipped="every reader is skipped by the recipe")
                continue
            hessian, mean_abs = stats[id(site)]
            group = _search(counted, hessian, mean_abs, bits, group_size, symmetric, group_fallback, grid)
            group.readers, group.fold_site = site.reader_names, site.fold_site
            _fold(site, group.scales, arch.norm_form)
            found[key] = group
        with torch.no_grad():
            outs = [run_module(block, h, kw) for h, kw in zip(hidden, kwargs)]
        hidden = [o[0] if isinstance(o, tuple) else o for o in outs]
    return found


def _sites(model: nn.Module, arch: DecoderArchitecture, block: nn.Module, prefix: str) -> list[_Site]:
    """The block's four groups in search order: the groups whose fold rescales another group's
    readers (v→o, up→down) come before those readers' own group, so each search sees the weights
    the quantizer will."""
    full = lambda path: prefix + path  # noqa: E731
    qkv, mlp_in = arch.attention_inputs(block), arch.mlp_inputs(block)
    attn_out, mlp_out = arch.module(block, arch.attn_out), arch.module(block, arch.mlp_out)
    heads, kv_heads, _ = attention_shape(model.config)
    sites = []

    values = _Site([attn_out], (full(arch.attn_out),), full(arch.qkv[-1]), writer=qkv[-1],
                   writer_rows=arch.value_rows(model.config))
    if kv_heads != heads:
        values.skipped = (f"grouped-query attention ({heads} query heads, {kv_heads} value heads): a value channel "
                          f"feeds several of {full(arch.attn_out)}'s columns, no exact per-column fold")
    sites.append(values)

    if len(mlp_in) == 2:
        up, up_rows, up_path = mlp_in[1], slice(None), arch.mlp_in[1]
    else:  # one fused [gate; up], or an ungated MLP's only input projection (GPT-2's c_fc)
        up, up_path = mlp_in[0], arch.mlp_in[0]
        gated = isinstance(mlp_out, nn.Linear) and up.out_features == 2 * mlp_out.in_features
        up_rows = slice(up.out_features // 2, None) if gated else None
    ups = _Site([mlp_out], (full(arch.mlp_out),), full(up_path), writer=up, writer_rows=up_rows)
    if up_rows is None and isinstance(mlp_out, nn.Linear):
        ups.skipped = f"{full(arch.mlp_out)}'s input is a non-linear function of {full(up_path)} (ungated MLP): no exact fold"
    sites.append(ups)

    sites.append(_Site(qkv, tuple(full(p) for p in arch.qkv), full(arch.attn_norm), norm=arch.module(block, arch.attn_norm)))
    sites.append(_Site(mlp_in, tuple(full(p) for p in arch.mlp_in), full(arch.mlp_norm),
                       norm=arch.module(block, arch.mlp_norm)))
    for site in sites:
        if site.skipped is None:
            odd = [n for n, lin in zip(site.reader_names, site.readers) if type(lin) is not nn.Linear]
            if odd or (site.writer is not None and type(site.writer) is not nn.Linear):
                site.skipped = f"{(odd or [site.fold_site])[0]} is not a plain nn.Linear (a rotation's online Hadamard?)"
    return sites


def _input_statistics(block: nn.Module, sites: list[_Site], hidden: list, kwargs: list) -> dict:
    """Per site: the Hessian of its readers' input (GPTQ's ``HessianAccumulator``; its scale does
    not move the search's argmin) and ``mean |x|`` per channel, from one float pass of the block
    over the calibration inputs."""
    hessians = {id(s): HessianAccumulator(s.readers[0]) for s in sites}
    abs_sums: dict[int, list] = {id(s): [0.0, 0] for s in sites}

    def hook(args, key):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        hessians[key].add(x)
        abs_sums[key][0] = abs_sums[key][0] + x.abs().sum(0)
        abs_sums[key][1] += x.shape[0]

    hooks = [s.readers[0].register_forward_pre_hook(lambda m, a, k=id(s): hook(a, k)) for s in sites]
    try:
        with torch.no_grad():
            for h, kw in zip(hidden, kwargs):
                run_module(block, h, kw)
    finally:
        for h in hooks:
            h.remove()
    return {key: (hessians[key].h, total / n) for key, (total, n) in abs_sums.items()}


def _search(readers: list[tuple[str, nn.Linear]], hessian: torch.Tensor, mean_abs: torch.Tensor, bits: int,
            group_size: int | None, symmetric: bool, group_fallback: bool, grid: int) -> AwqGroup:
    """The α on the grid with the least output error of the group's readers."""
    weights = [(name, lin.weight.detach().float()) for name, lin in readers]
    h = hessian.to(weights[0][1].device)
    base = mean_abs.clamp(min=1e-4).to(h.device)
    best = None
    for step in range(grid + 1):
        alpha = step / grid
        s = base.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for name, w in weights:
            g = resolve_group_size(group_size, w.shape[1], group_fallback, name)
            deq = quantize_groups(w * s, bits, g, symmetric, layer=name).dequantize() / s
            delta = deq - w
            err += float(((delta @ h) * delta).sum())
        if step == 0:
            rtn_error = err
        if best is None or err < best[1]:
            best = (alpha, err, s)
    alpha, err, s = best
    return AwqGroup((), "", alpha=alpha, scales=s.float().cpu(), rtn_error=rtn_error, error=err)


def _fold(site: _Site, scales: torch.Tensor, form: NormForm) -> None:
    """Readers ``W' = W diag(s)``; the writer of their input ``/ s`` (norm weight and bias, or rows)."""
    s = scales.double()
    with torch.no_grad():
        for lin in site.readers:
            lin.weight.copy_((lin.weight.double() * s.to(lin.weight.device)).to(lin.weight.dtype))
        if site.norm is not None:
            gamma = site.norm.weight.double()
            s_n = s.to(gamma.device)
            folded = (1 + gamma) / s_n - 1 if form is NormForm.RMS_OFFSET else gamma / s_n
            site.norm.weight.copy_(folded.to(site.norm.weight.dtype))
            bias = getattr(site.norm, "bias", None)
            if bias is not None:
                bias.copy_((bias.double() / s_n).to(bias.dtype))
        else:
            w = site.writer.weight
            rows = w[site.writer_rows]
            rows.copy_((rows.double() / s.to(w.device).unsqueeze(1)).to(w.dtype))
            if site.writer.bias is not None:
                b = site.writer.bias[site.writer_rows]
                b.copy_((b.double() / s.to(w.device)).to(b.dtype))
