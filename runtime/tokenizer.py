"""A model's tokenizer and chat template, read from a Hugging Face folder or a GGUF file's
vocabulary, and saved next to an artifact (``tokenizer.json``, ``tokenizer_config.json`` with the
chat template, ``generation_config.json``) so the artifact folder is all a device needs."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from edgeq.errors import ModelFileError, first_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p",
                   "max_length", "max_new_tokens", "repetition_penalty")


def load_tokenizer(source: str | Path, gguf_file: str | None = None):
    """The tokenizer of a folder (a Hugging Face model or an edgeq artifact), or of a GGUF file
    (``source`` the file, or its folder with ``gguf_file``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.is_dir():
        raise ModelFileError(f"{source}: no such folder (a tokenizer comes from a model folder or a .gguf file)")
    if gguf_file is None and not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise ModelFileError(f"{path}: no tokenizer.json or tokenizer_config.json here")
    hf_logging.set_verbosity_error()
    logging.getLogger("gguf").setLevel(logging.ERROR)
    try:
        return AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file)
    except Exception as exc:
        where = path / gguf_file if gguf_file else path
        raise ModelFileError(f"{where}: cannot read its tokenizer ({first_line(exc)})") from None


def generation_config_of(model=None, tokenizer=None) -> dict:
    """``generation_config.json``'s content: the model's own generation config where it has one,
    else the tokenizer's BOS/EOS ids."""
    config = {}
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        config = {k: v for k, v in gen.to_diff_dict().items() if k in GENERATION_KEYS}
    if tokenizer is not None:
        if config.get("eos_token_id") is None and tokenizer.eos_token_id is not None:
            config["eos_token_id"] = int(tokenizer.eos_token_id)
        if config.get("bos_token_id") is None and tokenizer.bos_token_id is not None:
            config["bos_token_id"] = int(tokenizer.bos_token_id)
    return config


def save_tokenizer_files(tokenizer, folder: str | Path, generation_config: dict | None = None) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (the chat template inside it) and
    ``generation_config.json`` into ``folder``; each file appears whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=folder) as tmp:
        tmp = Path(tmp)
        tokenizer.save_pretrained(str(tmp))
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        template = getattr(tokenizer, "chat_template", None)
        if template:
            config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps(generation_config if generation_config is not None else generation_config_of(None, tokenizer),
                       indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (tmp / name).exists():
                (tmp / name).replace(folder / name)
                written.append(folder / name)
    return written


def read_generation_config(folder: str | Path) -> dict:
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def prompt_ids(tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
    """Token ids of ``prompt``; with ``chat``, wrapped in the model's chat template as one user
    turn (and a system turn if given), ready for the assistant's answer."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelFileError("this tokenizer has no chat template: drop --chat")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    return list(tokenizer(prompt).input_ids)
