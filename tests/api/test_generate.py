"""Generation over KV-cache sessions: the same greedy token ids from PyTorch (the model's own
``generate``), the torch session and the KV-cache ONNX file on onnxruntime; maximum context as a
named error; seeded sampling; streamed text equal to the batch decode; the tokenizer files beside
the artifact; ``edgeq generate`` end to end. A tiny random-init Llama with a byte-level tokenizer
built here (tests/_generation.py), nothing downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeq
from edgeq.cli import main
from edgeq.errors import ContextLengthError, ModelFileError, RecipeError
from edgeq.generation import BuildOptions, build_generation_artifact, compile_generation_artifact, export_generation_onnx, load_generator
from edgeq.quant.embedding import quantize_embeddings
from edgeq.runtime.generation import (
    Generation,
    IncrementalDetokenizer,
    OrtCausalLMSession,
    SamplingConfig,
    TorchCausalLMSession,
    pick_token,
)
from edgeq.runtime.tokenizer import load_tokenizer, prompt_ids
from _devices import uses_arm64_device
from _generation import tiny_llama, tiny_llama_folder, tiny_tokenizer

NEW_TOKENS = 32
MAX_CONTEXT = 64
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def w4_model(tokenizer):
    """The tiny Llama at W4 g64 RTN with its tied embedding/lm_head at 4 bits (one packed table)."""
    model = edgeq.quantize(tiny_llama(len(tokenizer), MAX_CONTEXT), "w4g64-rtn")
    quantize_embeddings(model, 4, 32)
    return model


@pytest.fixture(scope="module")
def w4_onnx(tmp_path_factory, w4_model, tokenizer):
    return export_generation_onnx(w4_model, tokenizer, tmp_path_factory.mktemp("w4") / "artifact")


@pytest.fixture(scope="module")
def w4_tvm(w4_onnx):
    """The TVM generation artifact of the KV-cache file, compiled for this host, in its own folder
    with the tokenizer files."""
    return compile_generation_artifact(w4_onnx, w4_onnx.parent / "tvm-cpu", "cpu")


def _greedy(session, tokenizer, ids, n=NEW_TOKENS):
    return Generation(session, tokenizer, ids, max_new_tokens=n, eos_token_ids=[]).run()


def test_torch_session_matches_the_models_own_generate(w4_model, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    with torch.no_grad():
        reference = w4_model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    result = _greedy(TorchCausalLMSession(w4_model), tokenizer, ids)
    assert result.token_ids == reference
    assert len(set(reference)) > 8  # varied text, not one repeated token


def test_onnxruntime_kv_file_gives_the_torch_ids(w4_model, w4_onnx, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    torch_result = _greedy(TorchCausalLMSession(w4_model), tokenizer, ids)
    ort_session = OrtCausalLMSession(w4_onnx)
    ort_result = _greedy(ort_session, tokenizer, ids)
    assert ort_result.token_ids == torch_result.token_ids
    assert ort_session.position == len(ids) + NEW_TOKENS - 1  # the last token is picked, not fed back


def test_tvm_artifact_gives_the_torch_ids(w4_model, w4_tvm, tokenizer):
    from edgeq.runtime.tvm_generation import TvmCausalLMSession

    ids = tokenizer(PROMPT).input_ids
    torch_ids = _greedy(TorchCausalLMSession(w4_model), tokenizer, ids).token_ids
    session = TvmCausalLMSession(w4_tvm)
    assert _greedy(session, tokenizer, ids).token_ids == torch_ids
    assert _greedy(session, tokenizer, [5], n=8).token_ids == _greedy(TorchCausalLMSession(w4_model), tokenizer, [5],
                                                                      n=8).token_ids
    assert session.max_context == MAX_CONTEXT
    with pytest.raises(ContextLengthError, match=f"maximum context of {MAX_CONTEXT}"):
        Generation(session, tokenizer, list(range(MAX_CONTEXT - 2)), max_new_tokens=8, eos_token_ids=[]).run()
    assert session.position == MAX_CONTEXT


def test_a_cached_artifact_without_its_cache_form_is_compiled_again(w4_onnx, tmp_path):
    """An artifact compiled before the cache form was recorded is not reused from the cache (its
    session would refuse it): the next build compiles it again, and then reuses that. So is one
    whose functions returned the in-place caches from every call (``"in_place"``: it runs, slower),
    and one whose caches came before ``cache_length`` (``"kept"``: its decode allocated its
    workspace every step; it runs, slower), or whose workspace has no logits item (its decode made
    the mask's views and its logits every step)."""
    import shutil

    from edgeq.generation import _generation_artifacts

    folder = tmp_path / "cache"
    shutil.copytree(w4_onnx.parent, folder, ignore=shutil.ignore_patterns("tvm-*"))
    options = BuildOptions(out_dir=folder, max_context=MAX_CONTEXT)
    first = build_generation_artifact("tiny", "tvm", options)
    meta = first.with_suffix(".json")
    data = json.loads(meta.read_text())
    assert data["generation"]["cache"] == "bound"
    del data["generation"]["cache"]
    meta.write_text(json.dumps(data))
    again = build_generation_artifact("tiny", "tvm", options)
    assert json.loads(again.with_suffix(".json").read_text())["generation"]["cache"] == "bound"
    stamp = again.stat().st_mtime_ns
    assert build_generation_artifact("tiny", "tvm", options).stat().st_mtime_ns == stamp  # reused
    data = json.loads(meta.read_text())
    data["generation"]["cache"] = "in_place"
    meta.write_text(json.dumps(data))
    assert json.loads(build_generation_artifact("tiny", "tvm", options).with_suffix(".json").read_text())["generation"]["cache"] == "bound"
    data = json.loads(meta.read_text())
    assert _generation_artifacts(meta.parent, cache_form_recorded=True) == [first]
    stale = {**data, "generation": {k: v for k, v in data["generation"].items() if k != "workspace_logits"}}
    meta.write_text(json.dumps(stale))  # compiled before decode's mask views and logits were made once
    assert _generation_artifacts(meta.parent, cache_form_recorded=True) == []
    data["generation"]["cache"] = "kept"  # the caches before cache_length, decode's workspace made each step
    meta.write_text(json.dumps(data))
    assert _generation_artifacts(meta.parent, cache_form_recorded=True) == []


def test_tvm_artifact_folder_runs_alone(w4_tvm, w4_onnx, capsys):
    folder = w4_tvm.parent
    assert folder != w4_onnx.parent and not list(folder.glob("*.onnx"))
    assert main(["generate", str(folder), "--prompt", PROMPT, "--max-new-tokens", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["executor"] == "tvm"
    assert main(["generate", str(w4_onnx.parent), "--prompt", PROMPT, "--max-new-tokens", "12", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == result["token_ids"]
    assert main(["generate", str(w4_onnx.parent), "--executor", "tvm", "--prompt", PROMPT, "--max-new-tokens", "12",
                 "--json"]) == 0  # the export folder, its compiled artifact in tvm-cpu/
    assert json.loads(capsys.readouterr().out)["artifact"] == str(w4_tvm)


def test_per_step_logits_agree(w4_model, w4_onnx, tokenizer):
    ids = np.array(tokenizer(PROMPT).input_ids)
    sessions = [TorchCausalLMSession(w4_model), OrtCausalLMSession(w4_onnx)]
    prefill = [s.prefill(ids) for s in sessions]
    np.testing.assert_allclose(prefill[1], prefill[0], rtol=0, atol=1e-4 * np.abs(prefill[0]).max())
    token = int(np.argmax(prefill[0]))
    for _ in range(4):
        logits = [s.decode(token) for s in sessions]
        np.testing.assert_allclose(logits[1], logits[0], rtol=0, atol=1e-4 * np.abs(logits[0]).max())
        token = int(np.argmax(logits[0]))


def test_one_token_prompt(w4_model, w4_onnx, tokenizer):
    results = [_greedy(s, tokenizer, [5], n=8) for s in (TorchCausalLMSession(w4_model), OrtCausalLMSession(w4_onnx))]
    assert results[0].token_ids == results[1].token_ids
    assert results[0].stats.prompt_tokens == 1 and results[0].stats.new_tokens == 8


def test_maximum_context_is_a_named_error(w4_model, w4_onnx, tokenizer):
    for session in (TorchCausalLMSession(w4_model), OrtCausalLMSession(w4_onnx)):
        assert session.max_context == MAX_CONTEXT
        with pytest.raises(ContextLengthError, match=f"maximum context of {MAX_CONTEXT}"):
            session.prefill(np.arange(MAX_CONTEXT + 1) % 200)
        assert session.position == 0  # nothing ran
        generation = Generation(session, tokenizer, list(range(MAX_CONTEXT - 2)), max_new_tokens=8, eos_token_ids=[],
                                reset=True)
        with pytest.raises(ContextLengthError):
            generation.run()  # 62 + 2 decoded tokens fill the cache; the third decode would pass it
        assert session.position == MAX_CONTEXT


def test_reset_starts_over(w4_onnx, tokenizer):
    session = OrtCausalLMSession(w4_onnx)
    first = _greedy(session, tokenizer, [7, 8, 9], n=6).token_ids
    assert _greedy(session, tokenizer, [7, 8, 9], n=6).token_ids == first


def test_seeded_sampling_is_reproducible_and_differs_by_seed(w4_onnx, tokenizer):
    session = OrtCausalLMSession(w4_onnx)
    ids = tokenizer(PROMPT).input_ids

    def sample(seed):
        config = SamplingConfig(temperature=1.0, top_k=50, top_p=0.95, seed=seed)
        return Generation(session, tokenizer, ids, max_new_tokens=24, sampling=config, eos_token_ids=[]).run().token_ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = np.random.default_rng(0).normal(size=300).astype(np.float32)
    rng = np.random.default_rng(0)
    best = int(np.argmax(logits))
    assert pick_token(logits, SamplingConfig(temperature=2.0, top_k=1), rng) == best
    assert pick_token(logits, SamplingConfig(temperature=2.0, top_p=1e-6), rng) == best
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert {pick_token(logits, SamplingConfig(temperature=5.0, top_k=5), rng) for _ in range(200)} == top5


def test_sampling_options_are_checked():
    with pytest.raises(RecipeError, match="temperature > 0"):
        SamplingConfig(top_k=5)
    with pytest.raises(RecipeError, match="top-p"):
        SamplingConfig(temperature=1.0, top_p=1.5)


def test_streamed_text_equals_the_batch_decode(w4_onnx, tokenizer):
    """Sampled at a high temperature, a random model emits stray byte tokens: pieces of multi-byte
    characters must be held back until complete, never garbled or lost."""
    session = OrtCausalLMSession(w4_onnx)
    for seed in range(3):
        config = SamplingConfig(temperature=3.0, seed=seed)
        generation = Generation(session, tokenizer, tokenizer(PROMPT).input_ids, max_new_tokens=40, sampling=config,
                                eos_token_ids=[])
        pieces = list(generation)
        assert "".join(pieces) == tokenizer.decode(generation.result.token_ids, skip_special_tokens=True)
        assert "".join(pieces) == generation.result.text


def test_detokenizer_holds_multibyte_characters_until_complete(tokenizer):
    text = "Café 日本語 🙂 Ελληνικά"
    ids = tokenizer(text).input_ids
    assert len(ids) > len(text) // 2  # byte tokens: several per character
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_tokenizer_files_beside_the_artifact(w4_onnx, tokenizer):
    folder = w4_onnx.parent
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == tokenizer.chat_template
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    again = load_tokenizer(folder)
    assert again(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    chat = prompt_ids(again, "hi", chat=True)
    assert again.decode(chat) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_artifact_folder_is_all_generation_needs(w4_onnx, tokenizer):
    generator = load_generator(w4_onnx.parent)
    assert generator.executor == "onnxruntime"
    assert generator.session.eos_token_ids == [tokenizer.eos_token_id]
    result = generator(PROMPT, max_new_tokens=8)
    assert result.token_ids == _greedy(OrtCausalLMSession(w4_onnx), tokenizer, tokenizer(PROMPT).input_ids, 8).token_ids[
        :len(result.token_ids)]
    assert result.stats.ttft_s > 0 and result.stats.prefill_tok_s > 0


def test_python_api_streams_and_runs_a_module(w4_model, w4_onnx, tokenizer):
    generation = edgeq.generate(w4_onnx, PROMPT, max_new_tokens=10, stream=True)
    text = "".join(generation)
    assert text == generation.result.text and generation.result.stats.new_tokens <= 10
    result = edgeq.generate(w4_model, PROMPT, tokenizer=tokenizer, executor="torch", max_new_tokens=10)
    assert result.token_ids == generation.result.token_ids  # the module as it is: no second quantization


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("hf") / "tiny-llama", MAX_CONTEXT)


def test_cli_on_a_model_folder_then_on_its_cache(hf_folder, tmp_path, capsys):
    out = tmp_path / "cache"
    args = [str(hf_folder), "--prompt", PROMPT, "--max-new-tokens", "12", "--preset", "w4g64-rtn", "-o", str(out)]
    assert main(["generate", *args, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (out / "model.onnx").exists() and (out / "tokenizer.json").exists()
    assert len(first["token_ids"]) == first["new_tokens"] <= 12
    assert first["executor"] == "onnxruntime" and first["decode_tok_s"] > 0
    assert main(["generate", *args, "--executor", "torch", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == first["token_ids"]
    assert main(["generate", str(out), "--prompt", PROMPT, "--max-new-tokens", "12"]) == 0  # the artifact folder
    printed = capsys.readouterr().out
    assert printed.startswith(first["text"])
    assert "TTFT" in printed and "decode tok/s" in printed


def test_cli_names_the_context_error(hf_folder, tmp_path, capsys):
    long_prompt = " ".join(["time"] * (MAX_CONTEXT + 8))
    code = main(["generate", str(hf_folder), "--prompt", long_prompt, "--executor", "torch", "--preset", "float"])
    assert code == ContextLengthError.exit_code
    assert "maximum context of 64" in capsys.readouterr().err


@pytest.mark.device
@uses_arm64_device
def test_cli_generates_on_the_arm64_device(hf_folder, tmp_path, capsys):
    """The model folder quantized, exported, compiled for arm64 and run over RPC with the cache on
    the emulated device: the same ids as PyTorch."""
    from _devices import running_arm64_device

    device = running_arm64_device()
    common = [str(hf_folder), "--prompt", PROMPT, "--max-new-tokens", "8", "--preset", "w4g64-rtn", "--json"]
    assert main(["generate", *common, "--executor", "torch"]) == 0
    expected = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(["generate", *common, "--executor", "tvm", "--target", "arm64", "--device", device.url,
                 "-o", str(tmp_path / "arm64")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["executor"] == "tvm" and result["token_ids"] == expected
    assert (tmp_path / "arm64" / "tvm-arm64" / "tokenizer.json").exists()


def test_cli_refuses_bad_sources_and_options(w4_onnx, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "hi"]) == ModelFileError.exit_code
    assert "no such model, artifact or folder" in capsys.readouterr().err
    assert main(["generate", str(w4_onnx.parent), "--prompt", "hi", "--executor", "torch"]) == RecipeError.exit_code
    assert "artifact folder" in capsys.readouterr().err
    assert main(["generate", str(w4_onnx.parent), "--prompt", "hi", "--top-k", "5"]) == RecipeError.exit_code
    assert "temperature > 0" in capsys.readouterr().err
    assert main(["generate", str(w4_onnx.parent), "--prompt", "hi", "--device", "rpc://127.0.0.1:1"]) == RecipeError.exit_code
    assert "--executor tvm" in capsys.readouterr().err


def test_default_compiled_context_is_the_models_capped():
    """``edgeq generate`` on a model compiles a cache of the model's context, at most 2048 tokens
    (SmolLM2's 8192 made the compile slow); --max-context asks for more, and passing the compiled
    length is a ContextLengthError (test_cli_names_the_context_error)."""
    from edgeq.generation import DEFAULT_MAX_CONTEXT, default_max_context

    assert DEFAULT_MAX_CONTEXT == 2048
    assert default_max_context(8192) == 2048 and default_max_context(64) == 64 and default_max_context(None) == 2048
