"""The task decides what a Hugging Face model exports and what ``validate`` compares (edgeq.tasks,
issue #17): an encoder is not a causal LM, and an output may be named like an inner value."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgeq
from edgeq.runtime.executors import OrtExecutor
from edgeq.tasks import CAUSAL_LM, CLASSIFIER, ENCODER, detect_task


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64)).eval()


def test_bert_model_exports_as_an_encoder_with_mask_and_token_types(tmp_path):
    """It was taken for a causal LM and failed on ``.logits``."""
    bert = _tiny_bert()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    path = edgeq.export(bert, (ids, mask, types), tmp_path / "bert.onnx")
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooled_embedding"]
    inputs = [ids.numpy(), mask.numpy(), types.numpy()]
    got = OrtExecutor(path).run(inputs)
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    np.testing.assert_allclose(got[0], want.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], want.pooler_output.numpy(), atol=1e-4)
    [report] = edgeq.validate(bert, [path], inputs)  # the same wrapping on the reference side
    assert report.ok and [n.output for n in report.outputs] == ["last_hidden_state", "pooled_embedding"]


def test_an_output_may_take_the_name_of_an_inner_value(tmp_path):
    """The exporter names the embedding lookup ``embedding``: asked for an output of that name, it
    wrote the name twice and onnx.checker refused the graph."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)).eval()
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
    path = edgeq.export(lm, ids, tmp_path / "lm.onnx", output_names=["embedding"])
    assert [o.name for o in onnx.load(path).graph.output] == ["embedding"]
    with torch.no_grad():
        want = lm(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(OrtExecutor(path).run([ids.numpy()])[0], want, atol=1e-4)


@pytest.mark.parametrize("name, task", [
    ("LlamaForCausalLM", CAUSAL_LM), ("GPT2LMHeadModel", CAUSAL_LM), ("BertModel", ENCODER),
    ("RobertaModel", ENCODER), ("ViTModel", ENCODER), ("ResNetModel", ENCODER),
    ("BertForSequenceClassification", CLASSIFIER), ("ViTForImageClassification", CLASSIFIER),
    ("ResNetForImageClassification", CLASSIFIER),
])
def test_task_comes_from_the_model_class(name, task):
    import transformers

    cls = getattr(transformers, name)
    config = cls.config_class(**_TINY.get(cls.config_class.model_type, {}))
    with torch.device("meta"):
        model = cls(config)
    assert detect_task(model) == task


_TINY = {"llama": dict(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
         "gpt2": dict(vocab_size=16, n_embd=8, n_layer=1, n_head=1),
         "bert": dict(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
         "roberta": dict(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
         "vit": dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=8, patch_size=4)}


def test_a_plain_module_has_no_task():
    assert detect_task(nn.Linear(2, 2)) is None
