"""QuaRot-style rotation of a LLaMA model (HuggingFace ``LlamaForCausalLM``), exact in float.

1. Fold each RMSNorm's scale γ into the linears that read it (q/k/v, gate/up; the final norm
   into lm_head) and set γ = 1: ``W' = W · diag(γ)``. An RMSNorm without γ commutes with any
   orthogonal ``Q``: ``rms(xQ) = rms(x)``.
2. Rotate the residual stream by one randomized Hadamard ``Q = diag(s) · H`` (hidden size):
   embeddings ``E' = E Q``; linears that read the stream ``W' = W Q``; linears that write it
   (o_proj, down_proj) ``W' = Qᵀ W``. The tied lm_head is untied first (it reads the stream).
3. Before down_proj an online Hadamard ``H_i`` (intermediate size) rotates the MLP activation,
   folded on the weight side: ``down' = OnlineHadamard -> Linear(W H_i)``. It spreads the huge
   outlier channels of down_proj's input over all channels.
4. Per head, a Hadamard of size head_dim between v_proj and o_proj: the attention mixes value
   vectors of one head linearly, so ``v' = v H_d`` passes through unchanged and is undone in
   o_proj's input; both halves fold into the weights (``W_v' = blockdiag(H_d)ᵀ W_v``,
   ``W_o' = W_o blockdiag(H_d)``), so no online op is needed there for weight-only quantization.

Everything is computed in float64 and written back in the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.errors import QuantizationError
from edgeq.maths.hadamard import hadamard_matrix, random_hadamard_matrix
from edgeq.quant.hadamard import OnlineHadamard


def is_llama(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (hasattr(inner, "layers") and hasattr(inner, "embed_tokens") and hasattr(inner, "norm")
            and hasattr(model, "lm_head"))


def _set_weight(linear: nn.Linear, w64: torch.Tensor) -> None:
    linear.weight.data = w64.to(linear.weight.dtype).contiguous()


def _w(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.data.double()


def _fold_norm(norm: nn.Module, linears: list[nn.Linear]) -> None:
    gamma = norm.weight.data.double()
    for lin in linears:
        _set_weight(lin, _w(lin) * gamma)
    norm.weight.data = torch.ones_like(norm.weight.data)


def untie_lm_head(model: nn.Module) -> None:
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.config.tie_word_embeddings = False


def rotate_llama(model: nn.Module, seed: int = 0) -> nn.Module:
    """Rotate ``model`` in place (see the module docstring) and return it."""
    if not is_llama(model):
        raise QuantizationError(f"Hadamard rotation needs a LLaMA-style decoder; {type(model).__name__} is not one")
    for block in model.model.layers:
        for lin in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj,
                    block.self_attn.o_proj, block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            if not isinstance(lin, nn.Linear):
                raise QuantizationError(f"rotate the float model before quantizing: found {type(lin).__name__}")
            if lin.bias is not None and lin in (block.self_attn.o_proj, block.mlp.down_proj):
                raise QuantizationError("rotation of o_proj/down_proj with a bias is not supported")
    untie_lm_head(model)
    hidden = model.config.hidden_size
    head_dim = getattr(model.config, "head_dim", None) or hidden // model.config.num_attention_heads
    q = random_hadamard_matrix(hidden, seed, torch.float64)
    h_head = hadamard_matrix(head_dim, torch.float64)

    emb = model.model.embed_tokens
    emb.weight.data = (emb.weight.data.double() @ q).to(emb.weight.dtype)
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        _fold_norm(block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fold_norm(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _set_weight(lin, _w(lin) @ q)
        # per-head rotation folded into v_proj's output and o_proj's input
        v_heads = attn.v_proj.out_features // head_dim
        o_heads = attn.o_proj.in_features // head_dim
        _set_weight(attn.v_proj, torch.block_diag(*[h_head.T] * v_heads) @ _w(attn.v_proj))
        if attn.v_proj.bias is not None:
            attn.v_proj.bias.data = (attn.v_proj.bias.data.double() @ torch.block_diag(*[h_head] * v_heads)).to(attn.v_proj.bias.dtype)
        _set_weight(attn.o_proj, q.T @ (_w(attn.o_proj) @ torch.block_diag(*[h_head] * o_heads)))
        # online Hadamard before down_proj, its inverse folded into down_proj's input side
        down = mlp.down_proj
        online = OnlineHadamard(down.in_features)
        _set_weight(down, q.T @ (_w(down) @ hadamard_matrix(down.in_features, torch.float64)))
        mlp.down_proj = nn.Sequential(online, down)
    _fold_norm(model.model.norm, [model.lm_head])
    _set_weight(model.lm_head, _w(model.lm_head) @ q)
    model.config.edgeq_rotation = {"kind": "quarot", "seed": seed}
    return model
