"""GPTQ: quantize a weight column by column, pushing each column's rounding error onto the
columns not yet quantized through the inverse Hessian of the layer's inputs.

For a layer ``y = x Wᵀ`` the output error of a weight change is ``ΔW H ΔWᵀ`` with
``H = E[x xᵀ]`` (calibration activations). With ``U = chol(H⁻¹)ᵀ`` (upper), quantizing column
``j`` to ``q_j`` and updating ``W[:, j+1:] -= (w_j - q_j) / U[j, j] · U[j, j+1:]`` is the optimal
correction (Frantar et al., 2022). Knobs: damping (``damp · mean(diag H)`` added to the
diagonal), activation order (columns in decreasing ``diag H``), lazy block updates (the
correction is applied to the block, and to the rest of the matrix once per block). Groups are
contiguous in the *original* column order (edgeq's layer contract: no ``g_idx``), so export and
kernels need nothing new with act-order. Where a group's scale and zero come from:

* dynamic (default): fixed the first time one of its columns comes up, from the current (already
  corrected) values of all its columns;
* ``static_groups``: computed from the original weight, in original column order, before the
  act-order pass (the GPTQ reference's ``static_groups``).

Models: a LLaMA-style decoder (``model.model.layers``) is processed one block at a time
(capture the inputs of block i, quantize its linears in execution order -- q/k/v, o, gate/up,
down -- each group with Hessians from the already quantized earlier layers, then run the block
to get block i+1's inputs); any other module gets its Hessians from one float pass.

Float targets (``float_targets`` on a recipe, decoder blocks only): each layer is solved for the
float model's output instead of its own float weight on the quantized model's inputs. With
``X_q`` the inputs the partly quantized model gives the layer and ``X_f`` those the float model
gives it, ``|X_f Wᵀ - X_q Ŵᵀ|²`` is ``|X_q (W* - Ŵ)ᵀ|²`` plus a constant, where ``W* = W C H⁻¹``
(``H = X_qᵀ X_q``, ``C = X_fᵀ X_q``), so GPTQ (or LoPRo) solves ``W*`` with ``H`` as before and
corrects, in each layer, part of the error the layers before it left (the asymmetric calibration
of GPTAQ and Qronos, here as a changed target rather than a changed column loop).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from edgeq.errors import QuantizationError
from edgeq.maths.groups import (GroupQuant, check_grid, clip_ratios, group_params, quantize_with, resolve_group_size,
                                search_group_params)
from edgeq.quant.architectures import decoder_blocks
from edgeq.quant.base import StopForward, capture_block_inputs, run_module, set_submodule
from edgeq.quant.weight_only import flat_weight, from_float_layer


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int,
                         symmetric: bool = False, damp: float = 0.01, act_order: bool = True,
                         block_size: int = 128, clip_steps: int = 0, scale_dtype=torch.float16,
                         layer: str = "weight", static_groups: bool = False) -> GroupQuant:
    """GPTQ of one matrix ``weight`` [out, in] given ``hessian`` [in, in] (∝ Σ x xᵀ)."""
    out_features, in_features = weight.shape
    check_grid(bits, group_size, in_features, layer)
    if hessian.shape != (in_features, in_features):
        raise QuantizationError(f"{layer}: Hessian has shape {tuple(hessian.shape)}, expected {(in_features, in_features)}")
    gq, _ = gptq_solve(weight, hessian, bits, group_size, symmetric=symmetric, damp=damp, act_order=act_order,
                       block_size=block_size, clip_steps=clip_steps, scale_dtype=scale_dtype, layer=layer,
                       static_groups=static_groups)
    return gq


def gptq_solve(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *, n_quant: int | None = None,
               symmetric: bool = False, damp: float = 0.01, act_order: bool = False, block_size: int = 128,
               clip_steps: int = 0, scale_dtype=torch.float16, layer: str = "weight",
               static_groups: bool = False) -> tuple[GroupQuant, torch.Tensor]:
    """The one GPTQ solve: quantize the first ``n_quant`` columns of ``weight`` (all by default) in
    GPTQ order, and return them with the float columns after them, which stay unquantized but take
    the error updates (LoPRo's salient block absorbs what rounding lost that way).

    The Hessian is inverted in its own dtype: float64 where the caller gives float64 (LoPRo's
    rotated Hessians), else float32. ``act_order`` permutes every column, so it needs
    ``n_quant`` to be all of them.
    """
    out_features, in_features = weight.shape
    n_quant = in_features if n_quant is None else n_quant
    if act_order and n_quant != in_features:
        raise QuantizationError(f"{layer}: act_order reorders every column; it cannot leave {in_features - n_quant} in float")
    device = weight.device
    w = weight.detach().clone().float()
    h = hessian.detach().clone().to(device=device, dtype=torch.float64 if hessian.dtype == torch.float64 else torch.float32)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    groups = n_quant // group_size
    ratios = clip_ratios(clip_steps) if clip_steps > 1 else None
    scales = torch.zeros(out_features, groups, device=device)
    zeros = torch.zeros(out_features, groups, device=device)
    fixed = [False] * groups
    if static_groups:
        current = w[:, :n_quant].reshape(out_features, groups, group_size)
        if ratios is None:
            s, z = group_params(current, bits, symmetric, 1.0, scale_dtype)
        else:
            s, z = search_group_params(current.cpu(), bits, symmetric, ratios, None, scale_dtype)
        scales[:], zeros[:], fixed = s.to(device), z.to(device), [True] * groups
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_features, device=device)
    w = w[:, perm]
    h = h[perm][:, perm]
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    u = inverse_cholesky_upper(h, layer).float()

    group_of = (perm[:n_quant] // group_size).tolist()  # group of the column at each permuted position
    position = torch.empty_like(perm)
    position[perm] = torch.arange(in_features, device=device)  # permuted position of each original column
    q_all = torch.zeros(out_features, n_quant, device=device)

    # The column loop is thousands of tiny ops: one thread avoids OpenMP spin-waits, which made
    # it ~20x slower on a loaded 2-core machine (the block updates are small matmuls anyway).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _gptq_columns(w, u, q_all, scales, zeros, fixed, group_of, position, group_size, block_size, bits,
                      symmetric, ratios, scale_dtype)
    finally:
        torch.set_num_threads(threads)
    q_orig = q_all[:, position[:n_quant]]
    gq = GroupQuant(q_orig.to(torch.uint8).cpu(), scales.to(scale_dtype).cpu(), zeros.to(torch.uint8).cpu(), bits, group_size)
    return gq, w[:, n_quant:]


def _gptq_columns(w, u, q_all, scales, zeros, fixed, group_of, position, group_size, block_size, bits,
                  symmetric, ratios, scale_dtype):
    """The column loop of GPTQ over the first ``q_all.shape[1]`` columns (in place on ``w``,
    ``q_all``, ``scales``, ``zeros``, ``fixed``); later columns take the lazy updates only."""
    n_quant, device = q_all.shape[1], w.device
    for i1 in range(0, n_quant, block_size):
        i2 = min(i1 + block_size, n_quant)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = group_of[i1 + i]
            if not fixed[g]:
                current = _current_group_values(w, w1, err1, u, position, g, group_size, i1, i2, i)
                if ratios is None:
                    s, z = group_params(current, bits, symmetric, 1.0, scale_dtype)
                else:
                    s, z = search_group_params(current.cpu(), bits, symmetric, ratios, None, scale_dtype)
                    s, z = s.to(device), z.to(device)
                scales[:, g], zeros[:, g], fixed[g] = s, z, True
            col = w1[:, i]
            q = quantize_with(col.unsqueeze(-1), scales[:, g], zeros[:, g], bits).squeeze(-1)
            q_all[:, i1 + i] = q
            deq = (q - zeros[:, g]) * scales[:, g]
            e = (col - deq) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]


def inverse_cholesky_upper(h: torch.Tensor, layer: str) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹, retrying with more damping if H is not positive definite."""
    extra = 0.0
    mean_diag = torch.mean(torch.diag(h)).item()
    for _ in range(6):
        try:
            lower = torch.linalg.cholesky(h + extra * mean_diag * torch.eye(h.shape[0], device=h.device))
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            extra = 0.01 if extra == 0 else extra * 10
    raise QuantizationError(f"{layer}: the calibration Hessian is not positive definite even with damping")


def _current_group_values(w, w1, err1, u, position, g, group_size, i1, i2, i):
    """Current values [out, group_size] of group g's columns (none quantized yet): inside the
    block from ``w1``; after it, ``w`` minus the block's pending lazy correction."""
    pos = position[g * group_size:(g + 1) * group_size]
    in_block = (pos >= i1) & (pos < i2)
    out = torch.empty(w.shape[0], group_size, device=w.device)
    if in_block.any():
        out[:, in_block] = w1[:, pos[in_block] - i1]
    later = ~in_block
    if later.any():
        p = pos[later]
        out[:, later] = w[:, p] - err1[:, :i] @ u[i1:i1 + i, p]
    return out


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over a layer's inputs (Linear rows, or Conv2d unfolded patches)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        cols = flat_weight(layer).shape[1]
        self.h = torch.zeros(cols, cols, device=layer.weight.device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if isinstance(self.layer, nn.Conv2d):
            if self.layer.groups != 1:
                raise QuantizationError("GPTQ of grouped convolutions is not supported")
            patches = F.unfold(x, self.layer.kernel_size, self.layer.dilation, self.layer.padding, self.layer.stride)
            x = patches.transpose(1, 2)
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        self.h *= self.n / (self.n + n)
        self.n += n
        x = x * math.sqrt(2 / self.n)
        self.h += x.T @ x


class FloatTargetAccumulator(HessianAccumulator):
    """``h`` of the quantized model's inputs and ``cross = 2/n Σ x_f x_qᵀ`` with the float model's
    inputs to the same layer on the same tokens (module docstring, float targets)."""

    def __init__(self, layer: nn.Module):
        if not isinstance(layer, nn.Linear):
            raise QuantizationError(f"float targets need Linear layers, got {type(layer).__name__}")
        super().__init__(layer)
        self.cross = torch.zeros_like(self.h)

    def add(self, x: torch.Tensor, x_float: torch.Tensor) -> None:
        n_before = self.n
        super().add(x)
        x = x.detach().float().reshape(-1, x.shape[-1])
        x_float = x_float.detach().float().reshape(-1, x_float.shape[-1])
        if x_float.shape != x.shape:
            raise QuantizationError(f"float targets: float inputs {tuple(x_float.shape)} do not pair with {tuple(x.shape)}")
        self.cross *= n_before / self.n
        self.cross += (2 / self.n) * x_float.T @ x


def float_target_weight(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp: float = 1.0) -> torch.Tensor:
    """``W* = W + W (C - H)(H + λI)⁻¹`` (``λ`` = ``damp`` × mean diag H): the least-squares
    ``W C H⁻¹`` (module docstring), written so that equal inputs (``C = H``) give ``W`` itself and
    the damping only shrinks the correction (a ridge: the recipe's ``float_target_damp``)."""
    h = hessian.double()
    damped = h + damp * torch.mean(torch.diag(h)).clamp_min(1e-12) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    w = weight.detach().double()
    correction = torch.linalg.solve(damped, (cross.double().T - h) @ w.T).T
    return (w + correction).to(weight.dtype)


def _float_target_layer(layer: nn.Linear, acc: FloatTargetAccumulator, damp: float) -> nn.Linear:
    """A Linear like ``layer`` holding ``W*``, for the solve to quantize (``layer`` is left as it is)."""
    target = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        target.weight.copy_(float_target_weight(layer.weight, acc.h, acc.cross, damp))
        if layer.bias is not None:
            target.bias.copy_(layer.bias)
    return target


def gptq_quantize_layer(name: str, layer: nn.Module, hessian: torch.Tensor, recipe) -> nn.Module:
    """``layer`` (``name`` in the model) GPTQ-quantized with ``hessian`` at ``recipe``'s knobs, as
    a weight-only layer: the per-layer step of ``gptq_quantize_model``."""
    weight = flat_weight(layer)
    group_size = resolve_group_size(recipe.group_size, weight.shape[1], recipe.group_fallback, name)
    gq = gptq_quantize_weight(weight, hessian, recipe.bits, group_size, recipe.symmetric, recipe.damp,
                              recipe.act_order, recipe.block_size, recipe.clip_steps, layer=name,
                              static_groups=getattr(recipe, "static_groups", False))
    return from_float_layer(layer, gq.q.to(layer.weight.device), gq.scales.to(layer.weight.device),
                            gq.zeros.to(layer.weight.device), recipe.bits)


def gptq_quantize_model(model: nn.Module, layers: dict[str, nn.Module], recipe, batches: list,
                        quantize_layer=None) -> nn.Module:
    """Replace ``layers`` (names in ``model``) by GPTQ-quantized weight-only layers, in place.

    ``quantize_layer(name, layer, hessian, recipe) -> nn.Module`` replaces the per-layer GPTQ
    (methods such as LoPRo reuse the block-by-block Hessian capture with their own solve)."""
    quantize_layer = quantize_layer or gptq_quantize_layer
    blocks = decoder_blocks(model)
    if blocks is None:
        return _gptq_one_pass(model, layers, recipe, batches, quantize_layer)
    prefix = _blocks_prefix(model, blocks)
    outside = [n for n in layers if not n.startswith(prefix)]
    if outside:
        raise QuantizationError(
            f"GPTQ quantizes decoder-block layers only; skip {outside[0]!r} (e.g. skip=('lm_head',))")
    return _gptq_blockwise(model, blocks, prefix, layers, recipe, batches, quantize_layer)


def _blocks_prefix(model, blocks) -> str:
    for name, m in model.named_modules():
        if m is blocks:
            return name + "."
    raise QuantizationError("decoder blocks not found in the model")


def _gptq_one_pass(model, layers, recipe, batches, quantize_layer):
    acc = {name: HessianAccumulator(layer) for name, layer in layers.items()}
    hooks = [layer.register_forward_pre_hook(lambda m, args, a=acc[name]: a.add(args[0])) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                run_module(model, batch)
    finally:
        for h in hooks:
            h.remove()
    for name, layer in tqdm(layers.items(), desc="gptq", leave=False):
        set_submodule(model, name, quantize_layer(name, layer, acc[name].h, recipe))
    return model


def _execution_groups(block, names_in_block, hidden, kwargs):
    """Layers of one block grouped by shared input, in the order the forward pass reaches them."""
    # the inputs themselves are kept (compared with ``is``): an ``id`` of a freed tensor can be reused
    # by a later one, which grouped unrelated layers depending on the allocator
    order: list[tuple[str, torch.Tensor]] = []
    hooks = [block.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: order.append((n, args[0]))) for n in names_in_block]
    try:
        with torch.no_grad():
            block(hidden, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    last_input = None
    for name, layer_input in order:
        if name in sum(groups, []):
            continue
        if groups and layer_input is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = layer_input
    return groups


def _layer_inputs(block, names, hidden, kwargs, sink) -> None:
    """Run ``block`` on one batch until the last of ``names`` has its input; ``sink(name, x)`` for each."""
    last = names[-1]

    def hook(name, x):
        sink(name, x)
        if name == last:
            raise StopForward

    hooks = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(n, a[0])) for n in names]
    try:
        with torch.no_grad():
            block(hidden, **kwargs)
    except StopForward:
        pass
    finally:
        for hk in hooks:
            hk.remove()


def _float_block_pass(float_block, names, hidden, kwargs):
    """(per batch, ``{name: the input of layer name}``; per batch, the block's output) of the float
    ``float_block``: its inputs do not change while the block's layers are quantized, so one whole
    pass per batch gives every group's float inputs and the next block's float stream."""
    inputs, outs = [], []
    for h, kw in zip(hidden, kwargs):
        seen = {}
        hooks = [float_block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0]))
                 for n in names]
        try:
            with torch.no_grad():
                out = float_block(h, **kw)
        finally:
            for hk in hooks:
                hk.remove()
        inputs.append(seen)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return inputs, outs


def _gptq_blockwise(model, blocks, prefix, layers, recipe, batches, quantize_layer):
    captured = capture_block_inputs(model, blocks[0], batches)
    hidden = [h for h, _ in captured]
    kwargs = [k for _, k in captured]
    float_targets = getattr(recipe, "float_targets", False)
    hidden_float = list(hidden) if float_targets else None  # the float model's stream, block by block
    bar = tqdm(total=len(layers), desc="gptq", leave=False)
    for index, block in enumerate(blocks):
        block_prefix = f"{prefix}{index}."
        names = [n[len(block_prefix):] for n in layers if n.startswith(block_prefix)]
        if float_targets:  # the float block's inputs to each layer and its outputs, one pass per batch
            float_inputs, hidden_float = _float_block_pass(copy.deepcopy(block), names, hidden_float, kwargs)
        if names:
            for group in _execution_groups(block, names, hidden[0], kwargs[0]):
                if float_targets:
                    acc = {n: FloatTargetAccumulator(block.get_submodule(n)) for n in group}
                    for h, kw, inputs in zip(hidden, kwargs, float_inputs):
                        _layer_inputs(block, group, h, kw, lambda n, x: acc[n].add(x, inputs[n]))
                else:
                    acc = {n: HessianAccumulator(block.get_submodule(n)) for n in group}
                    for h, kw in zip(hidden, kwargs):
                        _layer_inputs(block, group, h, kw, lambda n, x: acc[n].add(x))
                for n in group:
                    bar.set_postfix_str(f"{index}.{n}")
                    layer = block.get_submodule(n)
                    if float_targets:
                        layer = _float_target_layer(layer, acc[n], recipe.float_target_damp)
                    set_submodule(block, n, quantize_layer(block_prefix + n, layer, acc[n].h, recipe))
                    bar.update(1)
                del acc
        with torch.no_grad():
            outs = [block(h, **kw) for h, kw in zip(hidden, kwargs)]
        hidden = [o[0] if isinstance(o, tuple) else o for o in outs]
    bar.close()
    return model
