"""Shared by the generation tests: a tiny random-init Llama saved as a Hugging Face folder with a
byte-level BPE tokenizer trained here from a few sentences (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a small model that ran on a phone.",
    "Café crème, naïve façade, 日本語のテキスト, emoji 🙂 and Ελληνικά.",
    "Edge devices generate text one token at a time with a KV cache.",
]


def tiny_tokenizer():
    """A byte-level BPE (256 byte tokens + merges + 3 special tokens): multi-byte characters come
    out as several byte tokens, as in GPT-2 style vocabularies."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, max_context: int = 64, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_context,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    torch.manual_seed(seed)
    # a wide initialization gives varied greedy text (the default's repeats one token) with clear margins
    return LlamaForCausalLM(cfg).eval()


def tiny_llama_folder(folder: Path, max_context: int = 64) -> Path:
    """A Hugging Face folder (config.json, weights, tokenizer with chat template)."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), max_context)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
