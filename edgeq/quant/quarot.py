"""QuaRot-style rotation of a Hugging Face decoder, exact in float.

The architecture's facts (which norm reads the stream before which linears, which linears write
it, fused projections, the norm form) come from ``edgeq.quant.architectures``; an architecture
it does not describe is refused before anything changes.

1. Fold each norm's scale into the linears that read it and make the norm scale by 1:
   ``W' = W · diag(g)`` with ``g = γ`` for RMSNorm (then γ = 1) and ``g = 1 + γ`` for Gemma's
   zero-centred form (then γ = 0). A norm that scales by 1 commutes with any orthogonal ``Q``:
   ``rms(xQ) = rms(x)``. LayerNorm subtracts the mean, which a rotation does not preserve, so
   GPT-2 is first made mean-free as SliceGPT does: every residual writer (token and position
   tables, attention and MLP output projections) is followed by the centring projection
   ``C = I - 11ᵀ/n`` (``W' = C W``, ``b' = b C``, ``E' = E C``), so the stream's mean is zero and
   each LayerNorm equals ``γ · x / rms(x) + β``: an RMSNorm whose γ folds as above and whose β
   folds into the next linear's bias (``b' = b + W β``; lm_head gets one).
2. Rotate the residual stream by one randomized Hadamard ``Q = diag(s) · H`` (hidden size):
   embeddings ``E' = E Q`` (Gemma's √hidden embedding scale is a scalar: it commutes); linears
   that read the stream ``W' = W Q`` (a fused ``[q; k; v]`` or ``[gate; up]`` reads it as a
   whole); linears that write it (o_proj, down_proj) ``W' = Qᵀ W``, ``b' = b Q``. The tied
   lm_head is untied first (it reads the stream).
   Gemma2 normalizes the attention and MLP outputs before the residual add (post-norms): those
   norms' scales cannot fold into a residual add, so o_proj/down_proj keep writing the unrotated
   basis and an online ``x · diag(s) · H`` after each post-norm rotates its output into the stream.
3. Before down_proj an online Hadamard ``H_i`` (intermediate size) rotates the MLP activation,
   folded on the weight side: ``down' = OnlineHadamard -> Linear(W H_i)``. It spreads the huge
   outlier channels of down_proj's input over all channels.
4. Per head, a Hadamard of size head_dim between the value projection and o_proj: the attention
   mixes value vectors of one head linearly, so ``v' = v H_d`` passes through unchanged and is
   undone in o_proj's input; both halves fold into the weights (the value rows of v_proj or of a
   fused qkv_proj: ``W_v' = blockdiag(H_d)ᵀ W_v``, ``b_v' = b_v blockdiag(H_d)``;
   ``W_o' = W_o blockdiag(H_d)``). Queries and keys are not rotated on their output side, so
   rotary embeddings and Qwen3's per-head q/k norms see exactly what they saw before.

Everything is computed in float64 and written back in the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.errors import QuantizationError
from edgeq.maths.hadamard import hadamard_matrix, random_hadamard_matrix, random_signs
from edgeq.quant.architectures import (DecoderArchitecture, NormForm, architecture_of, attention_shape,
                                       tied_embeddings)
from edgeq.quant.base import hf_conv1d_as_linear, set_submodule
from edgeq.recipes import Recipe
from edgeq.quant.hadamard import OnlineHadamard


def _set_weight(linear: nn.Linear, w64: torch.Tensor) -> None:
    linear.weight.data = w64.to(linear.weight.dtype).contiguous()


def _w(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.data.double()


def _fold_norm(norm: nn.Module, linears: list[nn.Linear], form: NormForm) -> None:
    """Fold the norm's per-channel scale into ``linears`` and leave the norm scaling by 1."""
    gamma = norm.weight.data.double()
    if form is NormForm.RMS_OFFSET:
        scale, identity = 1 + gamma, torch.zeros_like(norm.weight.data)
    else:
        scale, identity = gamma, torch.ones_like(norm.weight.data)
    for lin in linears:
        _set_weight(lin, _w(lin) * scale)
    norm.weight.data = identity


def _write_stream(linear: nn.Linear, q: torch.Tensor) -> None:
    """A linear that writes the residual stream writes it rotated: ``W' = Qᵀ W``, ``b' = b Q``."""
    _set_weight(linear, q.T @ _w(linear))
    if linear.bias is not None:
        linear.bias.data = (linear.bias.data.double() @ q).to(linear.bias.dtype)


def untie_lm_head(model: nn.Module) -> None:
    if tied_embeddings(model):
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False


def check_rotatable(model: nn.Module) -> DecoderArchitecture:
    """The model's architecture facts, or an ArchitectureError/QuantizationError saying why a
    rotation cannot apply; raised before any weight changes."""
    arch = architecture_of(model, "Hadamard rotation")
    for index, block in enumerate(arch.blocks(model)):
        for path in (*arch.qkv, arch.attn_out, *arch.mlp_in, arch.mlp_out):
            lin = arch.module(block, path)
            if type(lin) is not nn.Linear and not (arch.conv1d and type(lin).__name__ == "Conv1D"):
                raise QuantizationError(
                    f"{arch.layers}.{index}.{path}: rotate the float model before quantizing (found {type(lin).__name__})")
    return arch


def rotate_decoder(model: nn.Module, seed: int = 0) -> nn.Module:
    """Rotate ``model`` in place (see the module docstring) and return it."""
    arch = check_rotatable(model)
    config = model.config
    hidden = config.hidden_size
    _, _, head_dim = attention_shape(config)
    if arch.conv1d:
        hf_conv1d_as_linear(model, Recipe())
    untie_lm_head(model)
    form = arch.norm_form
    if form is NormForm.LAYER_NORM:
        _layer_norms_to_rms(model, arch)
        form = NormForm.RMS
    q = random_hadamard_matrix(hidden, seed, torch.float64)
    signs = random_signs(hidden, seed)
    h_head = hadamard_matrix(head_dim, torch.float64)

    for table in _stream_tables(model, arch):
        table.weight.data = (table.weight.data.double() @ q).to(table.weight.dtype)
    for block in arch.blocks(model):
        qkv, mlp_in = arch.attention_inputs(block), arch.mlp_inputs(block)
        _fold_norm(arch.module(block, arch.attn_norm), qkv, form)
        _fold_norm(arch.module(block, arch.mlp_norm), mlp_in, form)
        for lin in (*qkv, *mlp_in):
            _set_weight(lin, _w(lin) @ q)
        _rotate_values_per_head(qkv[-1], arch.value_rows(config), h_head)
        o_proj = arch.module(block, arch.attn_out)
        _set_weight(o_proj, _w(o_proj) @ torch.block_diag(*[h_head] * (o_proj.in_features // head_dim)))
        down = arch.module(block, arch.mlp_out)
        _set_weight(down, _w(down) @ hadamard_matrix(down.in_features, torch.float64))
        set_submodule(block, arch.mlp_out, nn.Sequential(OnlineHadamard(down.in_features), down))
        for writer, post_norm in ((o_proj, arch.post_attn_norm), (down, arch.post_mlp_norm)):
            if post_norm is None:
                _write_stream(writer, q)
            else:  # writer -> norm stay unrotated; the norm's output is rotated online into the stream
                norm = arch.module(block, post_norm)
                set_submodule(block, post_norm, nn.Sequential(norm, OnlineHadamard(hidden, signs=signs)))
    lm_head = model.get_submodule(arch.lm_head)
    _fold_norm(model.get_submodule(arch.final_norm), [lm_head], form)
    _set_weight(lm_head, _w(lm_head) @ q)
    config.edgeq_rotation = {"kind": "quarot", "seed": seed}
    return model


def _stream_tables(model: nn.Module, arch: DecoderArchitecture) -> list[nn.Embedding]:
    """The embedding tables added into the residual stream (tokens; GPT-2's positions too)."""
    return [model.get_submodule(p) for p in (arch.embedding, arch.positions) if p]


def _layer_norms_to_rms(model: nn.Module, arch: DecoderArchitecture) -> None:
    """Make the residual stream mean-free and every LayerNorm an RMSNorm with γ (SliceGPT; see
    the module docstring, step 1): β folds into the next linears' biases."""
    n = model.config.hidden_size
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    for table in _stream_tables(model, arch):
        table.weight.data = (table.weight.data.double() @ centre).to(table.weight.dtype)
    readers = []
    for block in arch.blocks(model):
        for path in (arch.attn_out, arch.mlp_out):
            _write_stream(arch.module(block, path), centre)
        readers += [(block, arch.attn_norm, arch.attention_inputs(block)),
                    (block, arch.mlp_norm, arch.mlp_inputs(block))]
    lm_head = model.get_submodule(arch.lm_head)
    if lm_head.bias is None:
        lm_head.bias = nn.Parameter(torch.zeros(lm_head.out_features, dtype=lm_head.weight.dtype))
    readers.append((model, arch.final_norm, [lm_head]))
    for root, path, linears in readers:
        norm = arch.module(root, path)
        beta = norm.bias.data.double()
        for lin in linears:
            bias = lin.bias.data.double() if lin.bias is not None else torch.zeros(lin.out_features, dtype=torch.float64)
            lin.bias = nn.Parameter((bias + _w(lin) @ beta).to(lin.weight.dtype))
        rms = nn.RMSNorm(n, eps=norm.eps, dtype=norm.weight.dtype)
        rms.weight.data = norm.weight.data.clone()
        set_submodule(root, path, rms)


def _rotate_values_per_head(linear: nn.Linear, rows: slice, h_head: torch.Tensor) -> None:
    """``v' = v · blockdiag(H_d)`` on the value rows of ``linear`` (weight and bias)."""
    w = _w(linear)
    v = w[rows]
    heads = v.shape[0] // h_head.shape[0]
    w[rows] = torch.block_diag(*[h_head.T] * heads) @ v
    _set_weight(linear, w)
    if linear.bias is not None:
        b = linear.bias.data.double()
        b[rows] = b[rows] @ torch.block_diag(*[h_head] * heads)
        linear.bias.data = b.to(linear.bias.dtype)
