"""What a model computes (its task) and the outputs its export and its validation compare.

A Hugging Face model returns a ``ModelOutput`` (a dict-like object), which neither ONNX nor a
numerics check can take: the task decides which of its fields become graph outputs.

* ``causal-lm``: ``logits`` (no KV cache; ``edgeq.export_kv`` exports the cache);
* ``classifier``: ``logits``, the class scores of a sequence or image classifier;
* ``encoder``: ``last_hidden_state`` and, where the model has a pooler, ``pooled_embedding``
  (BERT/RoBERTa/MiniLM, ViT, ResNet base models).

The task comes from the model's class (transformers' auto-class tables, keyed by
``config.model_type``), else ``config.architectures``, else the fields of the model's outputs.
A module that is not a Hugging Face model is exported and compared as it is. ``edgeq.export``
and ``edgeq.validate``'s PyTorch reference both go through :func:`wrap`, so they compare the same
outputs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from edgeq.errors import ExportError

CAUSAL_LM, CLASSIFIER, ENCODER = "causal-lm", "classifier", "encoder"
# a ModelOutput field -> its graph output name: names a traced value cannot have (the exporter
# names values after FX nodes such as ``embedding`` or ``linear``, and weights after modules)
OUTPUT_FIELDS = {CAUSAL_LM: {"logits": "logits"}, CLASSIFIER: {"logits": "logits"},
                 ENCODER: {"last_hidden_state": "last_hidden_state", "pooler_output": "pooled_embedding"}}
_IMAGE_INPUTS = ("pixel_values",)


@dataclass(frozen=True)
class TaskSignature:
    """How a task's model leaves for ONNX: the module to trace and its graph's names."""

    task: str | None  # None: not a Hugging Face model, exported as it is
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_dims: tuple[Mapping[int, str], ...]


class TaskOutputs(nn.Module):
    """Calls a Hugging Face model with its inputs by name and returns the task's fields as a tuple
    of tensors (a single tensor when there is one)."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], fields: tuple[str, ...], options: dict):
        super().__init__()
        self.lm, self.input_names, self.fields, self.options = model, input_names, fields, options

        def forward(*inputs: torch.Tensor):
            return self.task_outputs(*inputs)

        # the exporter records the names of forward's parameters: the model's input names
        forward.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names])
        self.forward = forward

    def task_outputs(self, *inputs: torch.Tensor):
        out = self.lm(**dict(zip(self.input_names, inputs)), **self.options)
        values = tuple(_field(out, f) for f in self.fields)
        return values[0] if len(values) == 1 else values


class CausalLMLogits(TaskOutputs):
    """A causal LM's ``logits``. The exporter writes each node's module path (class and attribute
    names) into the file: these keep the names of the wrapper that preceded this module, so that
    causal LM files stay byte-identical (``tests/export/test_export_invariance.py``)."""


CausalLMLogits.__module__, CausalLMLogits.__name__, CausalLMLogits.__qualname__ = "edgeq.export", "_CausalLMLogits", "_CausalLMLogits"


def detect_task(model: nn.Module) -> str | None:
    """The task of a Hugging Face model by its class or config; None for any other module, or a
    Hugging Face model whose class says nothing (then :func:`wrap` reads its outputs)."""
    if not _is_hf_model(model):
        return None
    names = {type(model).__name__, *(getattr(model.config, "architectures", None) or [])}
    for name in names:
        task = _task_of_class_name(name)
        if task:
            return task
    return None


def wrap(model: nn.Module, args: tuple) -> TaskSignature:
    """The module to export (or run as the reference) for ``args``, with its input and output
    names and symbolic dimensions. Input names follow the model's ``forward`` parameters
    (``input_ids, attention_mask, token_type_ids`` for BERT; ``pixel_values`` for ViT)."""
    if not _is_hf_model(model):
        return TaskSignature(None, model, (), (), ())
    input_names = _input_names(model, len(args))
    task = detect_task(model) or _task_from_outputs(model, input_names, args)
    if task is None:
        return TaskSignature(None, model, (), (), ())
    options = {"use_cache": False} if task == CAUSAL_LM else {}
    fields = tuple(f for f in OUTPUT_FIELDS[task] if task != ENCODER or f != "pooler_output" or _has_pooler(model))
    dims = tuple({0: "batch"} if name in _IMAGE_INPUTS else {0: "batch", 1: "seq"} for name in input_names)
    wrapper = CausalLMLogits if task == CAUSAL_LM else TaskOutputs
    return TaskSignature(task, wrapper(model, input_names, fields, options), input_names,
                         tuple(OUTPUT_FIELDS[task][f] for f in fields), dims)


def _is_hf_model(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type") and hasattr(model, "get_input_embeddings")


def _task_of_class_name(name: str) -> str | None:
    from transformers.models.auto import modeling_auto as auto

    def known(table) -> bool:
        return any(name == v or (isinstance(v, tuple) and name in v) for v in table.values())

    if known(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return CAUSAL_LM
    if known(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES) or known(auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES):
        return CLASSIFIER
    if known(auto.MODEL_MAPPING_NAMES):
        return ENCODER
    return None


def _task_from_outputs(model: nn.Module, input_names: tuple[str, ...], args: tuple) -> str | None:
    """A model of a class transformers does not list: its outputs' fields say what it is."""
    with torch.no_grad():
        out = model(**dict(zip(input_names, args)))
    if getattr(out, "logits", None) is not None:
        return CAUSAL_LM if getattr(out, "past_key_values", None) is not None else CLASSIFIER
    if getattr(out, "last_hidden_state", None) is not None:
        return ENCODER
    return None


def _input_names(model: nn.Module, count: int) -> tuple[str, ...]:
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if count > len(params):
        raise ExportError(f"{type(model).__name__} takes {len(params)} positional inputs ({', '.join(params)}), got {count}")
    return tuple(params[:count])


def _has_pooler(model: nn.Module) -> bool:
    return getattr(model, "pooler", None) is not None


def _field(out, name: str) -> torch.Tensor:
    value = out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)
    if value is None:
        raise ExportError(f"{type(out).__name__} has no {name!r}: the model does not compute its task's output")
    return value
