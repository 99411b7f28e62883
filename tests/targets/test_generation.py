"""The TVM generation artifact (``edgeq.compile`` of a KV-cache file): ``prefill`` and ``decode``
over one copy of the packed weights, the cache kept in the runtime between calls
(``edgeq.runtime.tvm_generation.TvmCausalLMSession``).

On a tiny Llama (float and W4 with a 4-bit tied table), greedy generation of 32 tokens gives the
same token ids on TVM, onnxruntime with the KV-cache file and PyTorch's own ``generate``, and every
step's logits equal the PyTorch model's full-sequence forward within the float floor rule
(``edgeq.runtime.float_floor``, bar 1e-4 of the logits' scale); on the host and on the emulated
arm64 device (which the device tests skip without, unless EDGEQ_REQUIRE_DEVICE=arm64).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import edgeq
from edgeq.errors import CompileError, ContextLengthError
from edgeq.export_kv import read_generation_metadata
from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
from edgeq.runtime.tvm_generation import TvmCausalLMSession
from edgeq.targets.registry import get_target

from _devices import uses_arm64_device
from _kv_cache import VOCAB, OrtSession, greedy, quantized, tiny_causal_lm

NEW_TOKENS = 32
MAX_CONTEXT = 48
PROMPT = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    """name -> (model, KV-cache ONNX path, host artifact); prefill_chunk 4 so the prompt takes two calls."""
    out = tmp_path_factory.mktemp("gen")
    built = {}
    for name, model in [("float", tiny_causal_lm()), ("w4", quantized(tiny_causal_lm()))]:
        path = edgeq.export(model, None, out / f"{name}.onnx", kv_cache=True)
        art = edgeq.compile(path, target="cpu", out_dir=out, max_context=MAX_CONTEXT, prefill_chunk=4)
        built[name] = model, path, art
    return built


def torch_generate(model) -> list[int]:
    with torch.no_grad():
        out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)
    return out[0, PROMPT.shape[1]:].tolist()


def check_generation(model, path, session):
    tokens, logits = greedy(session, PROMPT.numpy()[0], NEW_TOKENS)
    ort_tokens, _ = greedy(OrtSession(path, read_generation_metadata(path)), PROMPT.numpy()[0], NEW_TOKENS)
    assert tokens == ort_tokens == torch_generate(model)
    full = torch.cat([PROMPT, torch.tensor([tokens[:-1]])], dim=1)  # step t's logits are position P - 1 + t
    first = PROMPT.shape[1] - 1
    ref32, ref64 = causal_lm_logits(model, full)[0, first:], float64_logits(model, full)[0, first:]
    check = judge(logits, ref32, ref64)
    assert check.ok, check.to_dict()
    assert session.position == PROMPT.shape[1] + NEW_TOKENS - 1


@pytest.mark.parametrize("name", ["float", "w4"])
def test_greedy_generation_on_the_host(llamas, name):
    model, path, art = llamas[name]
    session = TvmCausalLMSession(art.path)
    assert session.cache_in_place  # preallocated caches written at the position, no concat copy per step
    check_generation(model, path, session)


def test_artifact_metadata_and_one_copy_of_the_weights(llamas):
    _, path, art = llamas["w4"]
    meta = read_generation_metadata(path)
    assert art.outputs[0] == {"name": "logits", "dtype": "float32", "shape": [1, 1, VOCAB]}  # the last position only
    assert art.generation == {**meta, "max_context": MAX_CONTEXT, "prefill_chunk": 4, "batch": 1,
                              "functions": {"prefill": "prefill", "decode": "decode"}, "cache": "bound",
                              "workspace": "decode_workspace", "workspace_logits": art.generation["workspace_logits"]}
    assert isinstance(art.generation["workspace_logits"], int)
    # the two functions share the packed weights: the artifact holds them once, as packed as the file
    assert art.weight_bytes <= 1.2 * art.onnx_weight_bytes, (art.weight_bytes, art.onnx_weight_bytes)


def test_decode_returns_the_logits_alone_and_the_vm_kills_nothing(llamas):
    """The decode function's VM code: the logits are its one result (the caches it writes in place
    stay with the session), and no builtin per step ends an object's life early (``null_value``) or
    builds a tuple nothing reads (``make_tuple``): every intermediate is planned statically
    (``cpu_pipeline.relax_pipeline``). Its storages and views, those over ``past + 1`` positions
    at their bound (``bounded_views``), the reshapes between kernels and the logits' own come from
    ``decode_workspace`` once (``lift_decode_workspace``): a step allocates nothing, makes no view
    and no shape. The greedy tests above check the numbers."""
    import collections

    import tvm
    from tvm import relax

    art = llamas["w4"][2]
    code = relax.VMExecutable(tvm.runtime.load_module(str(art.path))).as_text()
    decode = code.split("@decode:")[1].split("\n@")[0]
    calls = collections.Counter(line.split()[1] for line in decode.splitlines() if line.strip().startswith("call"))
    assert calls["vm.builtin.null_value"] == calls["vm.builtin.make_tuple"] == calls["vm.builtin.copy"] == 0, calls
    assert calls["vm.builtin.reshape"] == calls["vm.builtin.make_shape"] == 0, calls
    assert calls["vm.builtin.alloc_storage"] == calls["vm.builtin.alloc_tensor"] == 0, calls
    # the mask's kernels and each layer's attention take past or past + 1: each boxed once per step
    assert calls["vm.builtin.make_prim_value"] <= 2, calls
    # the caches come after the four inputs the VM checks (num_input): their static shapes are not checked per step
    assert calls["vm.builtin.check_tensor_info"] == 4, calls
    assert "@decode_workspace:" in code
    returned = [line for line in decode.splitlines() if line.strip().startswith("ret")]
    assert len(returned) == 1
    session = TvmCausalLMSession(art.path)
    function, args = session.decode_call(3)
    logits = function(*args)
    assert logits.shape == (1, 1, VOCAB)
    # the logits are the workspace item the metadata names
    item = session._decode_workspace[art.generation["workspace_logits"]]
    np.testing.assert_array_equal(item.numpy(), logits.numpy())


def test_the_decode_workspace_changes_no_logit(llamas, tmp_path, monkeypatch):
    """The same KV-cache file compiled as before the bound form (``"kept"``: the caches before
    ``cache_length``, no ``bounded_views`` nor ``lift_decode_workspace``), which still runs, gives the same logits bit
    for bit over a greedy run; and logits a caller holds are not changed by the next step."""
    from edgeq.targets import bounded_views, generation, lift_decode_workspace

    _, path, lifted = llamas["w4"]
    monkeypatch.setattr(bounded_views, "bounded_views", lambda mod, function: mod)
    monkeypatch.setattr(lift_decode_workspace, "lift_decode_workspace", lambda mod, function: mod)
    monkeypatch.setattr(generation, "caches_after_length", lambda mod, functions: mod)
    plain = edgeq.compile(path, target="cpu", out_dir=tmp_path, max_context=MAX_CONTEXT, prefill_chunk=4)
    monkeypatch.undo()
    assert plain.generation["cache"] == "kept" and "workspace" not in plain.generation
    assert lifted.generation["cache"] == "bound" and lifted.generation["workspace"] == "decode_workspace"
    session = TvmCausalLMSession(lifted.path)
    tokens, logits = greedy(session, PROMPT.numpy()[0], NEW_TOKENS)
    plain_tokens, plain_logits = greedy(TvmCausalLMSession(plain.path), PROMPT.numpy()[0], NEW_TOKENS)
    assert tokens == plain_tokens and np.array_equal(logits, plain_logits)
    held = session.decode(tokens[-1])
    kept = held.copy()
    session.decode(int(held.argmax()))
    np.testing.assert_array_equal(held, kept)


@pytest.mark.parametrize("cache_read", [True, False])
def test_returning_logits_only_keeps_every_cache_write(cache_read):
    """A function ending in ``(logits, written cache)`` returns the logits alone only when the
    written cache is read by the function itself (as the attention reads it): a write that only
    the result reads would be dead code without it, so the caches stay returned (``in_place``)."""
    from tvm import relax

    from edgeq.targets.generation import returning_logits_only

    bb = relax.BlockBuilder()
    x, cache = (relax.Var(name, relax.TensorType([1, 4], "float32")) for name in ("x", "cache"))
    with bb.function("decode", [x, cache]):
        with bb.dataflow():
            written = bb.emit(relax.op.multiply(cache, cache))
            logits = bb.emit(relax.op.add(x, written if cache_read else x))
            out = bb.emit_output(relax.Tuple([logits, written]))
        bb.emit_func_output(out)
    mod = bb.get()
    got = returning_logits_only(mod, ["decode"])
    if cache_read:
        assert isinstance(got["decode"].ret_ty, relax.TensorType)
        relax.analysis.well_formed(got)
    else:
        assert got.same_as(mod)


def test_one_token_prompt_and_the_maximum_context(llamas):
    model, _, art = llamas["w4"]
    session = TvmCausalLMSession(art.path)
    ids = torch.randint(0, VOCAB, (1, MAX_CONTEXT), generator=torch.Generator().manual_seed(6))
    got = [session.prefill(ids[0, :1].numpy())]  # past = 0, seq = 1
    got += [session.decode(int(t)) for t in ids[0, 1:]]
    assert session.position == MAX_CONTEXT
    ref32 = causal_lm_logits(model, ids)[0]
    assert np.abs(np.stack(got) - ref32).max() <= 1e-4 * np.abs(ref32).max()
    with pytest.raises(ContextLengthError, match=f"maximum context of {MAX_CONTEXT}"):
        session.decode(0)
    assert session.position == MAX_CONTEXT  # nothing ran
    session.reset()
    with pytest.raises(ContextLengthError):
        session.prefill(ids[0].numpy().tolist() + [0])
    assert session.position == 0
    np.testing.assert_array_equal(session.prefill(ids[0, :1].numpy()), got[0])  # reset really emptied the cache


def test_int8_activations_match_their_pytorch_reference(llamas, tmp_path):
    """``act_bits=8`` reaches the generation artifact: its packed linears (the tied lm_head
    included) take the integer kernels. Each prefill of 4 random tokens (the int8 GEMM and GEMV
    kernels) equals the model with int8 activations (``edgeq.quant.int8_activations``, the
    kernels' arithmetic in PyTorch) within float rounding, where the float-activation artifact
    misses it by the int8 rounding itself; in the median over 12 prompts, because now and then an
    activation within float rounding of a rounding boundary lands on the other int8 step (one
    such step moves these tiny logits by ~4e-3). Greedy generation follows that model token for token."""
    from edgeq.quant.int8_activations import int8_activations
    from edgeq.targets.int8_lowbit import dot_isa

    model, path, exact = llamas["w4"]
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path, max_context=MAX_CONTEXT, prefill_chunk=4, act_bits=8)
    if dot_isa(get_target("cpu").tvm()) is None:
        assert art.int8_kernels == 0
        pytest.skip("this host has no byte dot product: act_bits=8 keeps the float kernels")
    assert art.act_bits == 8 and art.int8_kernels >= 1
    int8, floats = TvmCausalLMSession(art.path), TvmCausalLMSession(exact.path)
    prompts = torch.randint(0, VOCAB, (12, 4), generator=torch.Generator().manual_seed(7))
    errors = []
    for prompt in prompts:
        with int8_activations(model):
            reference = causal_lm_logits(model, prompt[None])[0, -1]
        scale = np.abs(reference).max()
        int8.reset(), floats.reset()
        errors.append([np.abs(session.prefill(prompt.numpy()) - reference).max() / scale for session in (int8, floats)])
    int8_error, float_error = np.median(errors, axis=0)
    assert int8_error <= 1e-5 and float_error >= 1e-3, (int8_error, float_error)
    tokens, _ = greedy(int8, PROMPT.numpy()[0], NEW_TOKENS)
    with int8_activations(model):
        assert tokens == torch_generate(model)


def test_compile_options_need_a_kv_cache_file(tmp_path, llamas):
    model, _, _ = llamas["float"]
    plain = edgeq.export(model, PROMPT, tmp_path / "plain.onnx")
    with pytest.raises(CompileError, match="apply to KV-cache files"):
        edgeq.compile(plain, target="cpu", out_dir=tmp_path, max_context=16)
    _, path, _ = llamas["float"]
    with pytest.raises(CompileError, match="not specialize"):
        edgeq.compile(path, target="cpu", out_dir=tmp_path, specialize={"seq": 1})
    assert not list(tmp_path.glob("*.so"))


@pytest.mark.parametrize("target", ["x86_64", "arm64", "armv7"])
def test_cross_compiles(llamas, tmp_path, target):
    from test_registry import E_MACHINE, elf_machines

    spec = get_target(target)
    if spec.cross_compiler and not _have(spec.cross_compiler):
        message = f"{spec.cross_compiler} not installed (Debian package {spec.compiler_package})"
        if os.environ.get("EDGEQ_REQUIRE_CROSS"):
            pytest.fail(message)
        pytest.skip(message)
    _, path, _ = llamas["w4"]
    art = edgeq.compile(path, target=target, out_dir=tmp_path, max_context=MAX_CONTEXT)
    assert elf_machines(art.path) == {E_MACHINE[spec.machine]}
    assert art.generation["functions"] == {"prefill": "prefill", "decode": "decode"}
    assert art.meta_path.exists()


def _have(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


@pytest.mark.device
@uses_arm64_device
@pytest.mark.parametrize("name", ["float", "w4"])
def test_greedy_generation_on_the_arm64_device(llamas, tmp_path_factory, name):
    from _devices import running_arm64_device

    device = running_arm64_device()
    model, path, _ = llamas[name]
    art = edgeq.compile(path, target="arm64", out_dir=tmp_path_factory.mktemp(f"arm64-{name}"),
                        max_context=MAX_CONTEXT, prefill_chunk=4)
    assert art.generation["workspace"] == "decode_workspace"  # passed by handle over RPC
    session = TvmCausalLMSession(art.path, device=device.url)
    try:
        check_generation(model, path, session)
    finally:
        session.close()


ARCHS = ["mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gpt2"]


@pytest.fixture(scope="module")
def other_archs(tmp_path_factory):
    """arch -> (W4 model, KV-cache ONNX path): the other causal-LM architectures the export takes."""
    out = tmp_path_factory.mktemp("gen_archs")
    built = {}
    for arch in ARCHS:
        model = quantized(tiny_causal_lm(arch))
        built[arch] = model, edgeq.export(model, None, out / f"{arch}.onnx", kv_cache=True)
    return built


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_of_other_architectures(other_archs, tmp_path, arch):
    """Mistral, Qwen2, Qwen3, Phi-3 (fused qkv / gate_up), Gemma (scaled embedding, 1 + w norms),
    Gemma2 (soft-capping, a sliding window of 8 inside the 32 tokens) and GPT-2 (Conv1D, learned positions, LayerNorm) at W4 with a 4-bit tied table generate the same 32
    tokens on TVM, onnxruntime and PyTorch, logits within the float floor, like the Llama above."""
    model, path = other_archs[arch]
    art = edgeq.compile(path, target="cpu", out_dir=tmp_path, max_context=MAX_CONTEXT, prefill_chunk=4)
    session = TvmCausalLMSession(art.path)
    # GPT-2's exported attention reads the appended cache outside the rewritten pattern: appending form
    assert art.generation["cache"] == ("appending" if arch == "gpt2" else "bound")
    assert session.cache_in_place == (arch != "gpt2")
    check_generation(model, path, session)


@pytest.mark.device
@uses_arm64_device
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_of_other_architectures_on_the_arm64_device(other_archs, tmp_path, arch):
    from _devices import running_arm64_device

    device = running_arm64_device()
    model, path = other_archs[arch]
    art = edgeq.compile(path, target="arm64", out_dir=tmp_path, max_context=MAX_CONTEXT, prefill_chunk=4)
    session = TvmCausalLMSession(art.path, device=device.url)
    try:
        check_generation(model, path, session)
    finally:
        session.close()


def test_an_artifact_without_its_cache_form_is_refused(llamas, tmp_path):
    """The cache form comes from the artifact's metadata (written by the compile), not from the
    compiled functions' signatures: metadata without it asks for a new compile."""
    import json
    import shutil

    from edgeq.errors import ModelFileError

    art = llamas["w4"][2]
    shutil.copy(art.path, tmp_path / art.path.name)
    meta = json.loads(art.meta_path.read_text())
    del meta["generation"]["cache"]
    (tmp_path / art.meta_path.name).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="no cache form"):
        TvmCausalLMSession(tmp_path / art.path.name)


def test_compile_cli_writes_a_generation_artifact(llamas, tmp_path, capsys):
    import json

    from edgeq.cli import main

    _, path, _ = llamas["w4"]
    assert main(["compile", str(path), "--target", "cpu", "--max-context", "16", "-o", str(tmp_path), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["generation"]["max_context"] == 16 and result["generation"]["prefill_chunk"] == 16
    session = TvmCausalLMSession(result["artifact"])
    session.prefill(PROMPT.numpy()[0])
    assert session.max_context == 16 and session.position == PROMPT.shape[1]
    assert main(["compile", str(path), "--target", "cpu", "--max-context", "0", "-o", str(tmp_path)]) == CompileError.exit_code
    assert "positive number of tokens" in capsys.readouterr().err
