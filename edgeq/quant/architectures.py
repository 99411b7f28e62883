"""What edgeq needs to know about each decoder architecture, in one place.

A method that depends on how a model is wired (Hadamard rotation folds norms into the linears
that read them, needs to know which linears write the residual stream, which rows of a fused
projection are the values) looks the facts up here by the Hugging Face ``config.model_type``
instead of probing attribute names:

    arch = architecture_of(model)           # ArchitectureError for an unknown model_type
    arch.norm_form                          # NormForm.RMS, RMS_OFFSET (Gemma: (1+γ)), LAYER_NORM
    block = arch.blocks(model)[0]
    arch.attention_inputs(block)            # [q_proj, k_proj, v_proj] or [qkv_proj] (Phi-3)

Every path is a dotted attribute path (``get_submodule``): model-level ones from the top-level
``*ForCausalLM``, block-level ones from one decoder block. Tied embeddings are a fact of the
instance, not of the architecture (``tied_embeddings(model)``).

Register another architecture with ``register_architecture(DecoderArchitecture(...))``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import nn

from edgeq.errors import QuantizationError


class ArchitectureError(QuantizationError):
    """A method needs facts about the model's architecture that edgeq does not have for its model
    type, or the model's modules do not match them (exits as a QuantizationError: code 6)."""


class NormForm(enum.Enum):
    """How a block's norm scales its normalized input ``n = x / rms(x)``."""

    RMS = "rms"  # γ · n  (LLaMA, Mistral, Qwen2/3, Phi-3)
    RMS_OFFSET = "rms_offset"  # (1 + γ) · n, γ stored zero-centred (Gemma, Gemma2)
    LAYER_NORM = "layer_norm"  # γ · (x - mean) / std + β  (GPT-2): the mean does not commute with a rotation


@dataclass(frozen=True)
class DecoderArchitecture:
    """Facts about one decoder-only family, keyed by the HF ``model_type`` values it covers.

    Model-level paths: ``embedding`` (token table), ``positions`` (learned position table, GPT-2),
    ``layers`` (the ``ModuleList`` of blocks), ``final_norm``, ``lm_head``.
    Block-level paths: ``attn_norm`` (reads the stream before attention), ``qkv`` (the linears
    reading its output: three, or one fused ``[q; k; v]`` row-wise), ``attn_out`` (writes the
    stream), ``post_attn_norm`` (Gemma2's norm on the attention output, before the residual add),
    ``mlp_norm``, ``mlp_in`` (gate/up, or one fused ``[gate; up]``), ``mlp_out``,
    ``post_mlp_norm``, ``head_norms`` (Qwen3's per-head q/k norms, after the projections).
    ``embedding_scale``: the token embedding is multiplied by ``sqrt(hidden_size)`` (Gemma; the
    HF embedding module does it, so a replacement table must too). ``conv1d``: the linears are
    HF ``Conv1D`` (weight stored [in, out]). ``qkv_bias``: q/k/v carry biases by default (Qwen2).
    ``tied_embeddings``: the family's default for ``tie_word_embeddings``.
    """

    model_types: tuple[str, ...]
    norm_form: NormForm = NormForm.RMS
    embedding: str = "model.embed_tokens"
    positions: str | None = None
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attn_norm: str = "input_layernorm"
    qkv: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    attn_out: str = "self_attn.o_proj"
    post_attn_norm: str | None = None
    mlp_norm: str = "post_attention_layernorm"
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    mlp_out: str = "mlp.down_proj"
    post_mlp_norm: str | None = None
    head_norms: tuple[str, ...] = ()
    embedding_scale: bool = False
    conv1d: bool = False
    qkv_bias: bool = False
    tied_embeddings: bool = False

    @property
    def name(self) -> str:
        return self.model_types[0]

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.module(model, self.layers)

    def attention_inputs(self, block: nn.Module) -> list[nn.Module]:
        return [self.module(block, p) for p in self.qkv]

    def mlp_inputs(self, block: nn.Module) -> list[nn.Module]:
        return [self.module(block, p) for p in self.mlp_in]

    def rms_norms(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every RMSNorm of ``model`` by path (block norms, Qwen3's head norms, the final norm); a
        norm wrapped with a rotation after it (``Sequential(norm, OnlineHadamard)``) by its own
        path inside the wrapper. Empty for LayerNorm families."""
        if self.norm_form is NormForm.LAYER_NORM:
            return {}
        block_paths = (self.attn_norm, self.post_attn_norm, self.mlp_norm, self.post_mlp_norm, *self.head_norms)
        paths = [f"{self.layers}.{i}.{p}" for i in range(len(self.blocks(model))) for p in block_paths if p]
        found = {}
        for path in (*paths, self.final_norm):
            norm = self.module(model, path)
            if isinstance(norm, nn.Sequential):
                path, norm = f"{path}.0", norm[0]
            found[path] = norm
        return found

    def value_rows(self, config) -> slice:
        """Rows of the value projection's weight inside ``qkv[-1]`` (all of v_proj, or the last
        ``num_key_value_heads * head_dim`` rows of a fused qkv_proj)."""
        heads, kv_heads, head_dim = attention_shape(config)
        return slice(heads * head_dim + kv_heads * head_dim if self.fused_qkv else 0, None)

    def module(self, root: nn.Module, path: str) -> nn.Module:
        """``root.get_submodule(path)``, or an ArchitectureError naming the missing path."""
        try:
            return root.get_submodule(path)
        except AttributeError:
            raise ArchitectureError(
                f"{type(root).__name__} has no module {path!r}, which the {self.name!r} architecture expects"
            ) from None


def attention_shape(config) -> tuple[int, int, int]:
    """``(num_attention_heads, num_key_value_heads, head_dim)`` from a HF config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


_ARCHITECTURES: dict[str, DecoderArchitecture] = {}


def register_architecture(arch: DecoderArchitecture) -> DecoderArchitecture:
    for model_type in arch.model_types:
        _ARCHITECTURES[model_type] = arch
    return arch


def architectures() -> dict[str, DecoderArchitecture]:
    """Every registered architecture by ``model_type``."""
    return dict(_ARCHITECTURES)


def model_type_of(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def find_architecture(model: nn.Module) -> DecoderArchitecture | None:
    """The facts for ``model``'s ``config.model_type``, or None."""
    return _ARCHITECTURES.get(model_type_of(model))


def architecture_of(model: nn.Module, needed_for: str = "this method") -> DecoderArchitecture:
    """The facts for ``model``, or an ArchitectureError naming its model type and the known ones."""
    arch = find_architecture(model)
    if arch is None:
        model_type = model_type_of(model)
        what = f"model_type {model_type!r}" if model_type else "no config.model_type (not a Hugging Face model)"
        raise ArchitectureError(
            f"{needed_for} needs the decoder's layout (norms, projections, residual writers); "
            f"{type(model).__name__} has {what}, which edgeq.quant.architectures does not describe. "
            f"Known: {', '.join(sorted(_ARCHITECTURES))}"
        )
    return arch


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The decoder blocks of ``model`` (what block-by-block methods such as GPTQ walk): the
    registered architecture's ``layers`` path; for a model type edgeq does not describe, the common
    Hugging Face layout ``model.layers`` where it is a non-empty ``ModuleList``; else None (not a
    decoder: the caller treats the model as one pass)."""
    arch = find_architecture(model)
    if arch is not None:
        return arch.blocks(model)
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


def tied_embeddings(model: nn.Module) -> bool:
    """Whether ``lm_head`` shares its weight with the token embedding in this instance."""
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and table is not None and head.weight is table.weight


register_architecture(DecoderArchitecture(("llama", "mistral")))
register_architecture(DecoderArchitecture(("qwen2",), qkv_bias=True, tied_embeddings=True))
register_architecture(DecoderArchitecture(("qwen3",), head_norms=("self_attn.q_norm", "self_attn.k_norm"),
                                          tied_embeddings=True))
register_architecture(DecoderArchitecture(("phi3",), qkv=("self_attn.qkv_proj",), mlp_in=("mlp.gate_up_proj",)))
register_architecture(DecoderArchitecture(("gemma",), norm_form=NormForm.RMS_OFFSET, embedding_scale=True,
                                          tied_embeddings=True))
register_architecture(DecoderArchitecture(("gemma2",), norm_form=NormForm.RMS_OFFSET, embedding_scale=True,
                                          post_attn_norm="post_attention_layernorm",
                                          mlp_norm="pre_feedforward_layernorm",
                                          post_mlp_norm="post_feedforward_layernorm", tied_embeddings=True))
register_architecture(DecoderArchitecture(("gpt2",), norm_form=NormForm.LAYER_NORM, embedding="transformer.wte",
                                          positions="transformer.wpe", layers="transformer.h",
                                          final_norm="transformer.ln_f", attn_norm="ln_1", qkv=("attn.c_attn",),
                                          attn_out="attn.c_proj", mlp_norm="ln_2", mlp_in=("mlp.c_fc",),
                                          mlp_out="mlp.c_proj", conv1d=True, qkv_bias=True, tied_embeddings=True))
