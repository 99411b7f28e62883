"""Generation speed of SmolLM2-135M-Instruct: edgeq against the peers people run on a CPU, in one
run on one machine.

    python benchmarks/generation.py                   # prompt 128 tokens, 128 new, 2 threads
    python benchmarks/generation.py --rounds 1 --no-append
    python benchmarks/generation.py --profile --skip "edgeq-tvm w4g128,edgeq-tvm w4g64"   # per kernel

Rows: edgeq's TVM generation artifact (W4 g128 RTN, and W4 g64 RTN, the W4 preset nearest the
4.5 bits/weight quoted for the GGUF's Q4_1), edgeq's KV-cache ONNX file on onnxruntime (MatMulNBits at accuracy level 4, int8
activations, as onnxruntime-genai's int4 CPU model; and level 0, float activations),
onnxruntime-genai's own int4 model (its model builder, from a Hugging Face folder written from the
same GGUF), llama.cpp's ``llama-bench`` on the GGUF itself, and PyTorch ``generate`` (float32).
Every edgeq model has its tied embedding / lm_head at 4 bits.

Each measurement runs in a fresh process (peak memory is that process's maximum resident set, so
the Python rows include the interpreter and its imports), after a short warm-up generation; rows
take turns for ``--rounds`` rounds and the median round is reported. Generation is forced to the
full count of new tokens (EOS ignored) everywhere except onnxruntime-genai, which stops at EOS
(its count is in the table). Peers are installed or built by this script under
``~/.cache/edgeq/peers`` (``EDGEQ_PEERS_CACHE``): onnxruntime-genai with pip, llama.cpp from the
llama-cpp-python source distribution (~8 min on 2 cores, once).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peers import CACHE, genai_python, llama_bench  # noqa: E402
from _results import append_results, cpu_flags, markdown_table, print_and_record  # noqa: E402

PROMPT_TEXT = (
    "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure in "
    "Paris. Its base is square, measuring 125 metres on each side. During its construction, the Eiffel Tower "
    "surpassed the Washington Monument to become the tallest man-made structure in the world, a title it held for "
    "41 years until the Chrysler Building in New York City was finished in 1930. It was the first structure to "
    "reach a height of 300 metres. Due to the addition of a broadcasting aerial at the top of the tower in 1957, "
    "it is now taller than the Chrysler Building by 5.2 metres. Excluding transmitters, the Eiffel Tower is the "
    "second tallest free-standing structure in France after the Millau Viaduct. The tower has three levels for "
    "visitors, with restaurants on the first and second levels. "
)
# W4 g64 stores 4 + (16-bit scale + 8-bit zero) / 64 = 4.375 bits per weight: of edgeq's W4 presets the
# nearest to the 4.5 bits/weight the issue quotes for Q4_1 (ggml's block_q4_1 is in fact 20 bytes per 32
# weights, 5.0 bits/weight; edgeq has no g32 W4 preset)
EDGEQ_PRESETS = {"w4g128": "w4g128-rtn", "w4g64": "w4g64-rtn"}


def peak_rss_mib(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def folder_bytes(path: Path, patterns=("*",)) -> int:
    return sum(p.stat().st_size for pattern in patterns for p in Path(path).glob(pattern) if p.is_file())


# ---------------------------------------------------------------- preparation (cached)

def hf_folder(cache: Path) -> Path:
    """SmolLM2 as a Hugging Face folder, written from the GGUF (transformers refuses to save a
    GGUF-loaded model: build it from its config, load the state dict, save)."""
    out = cache / "smollm2-hf"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM

    from edgeq.models.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def prompt_ids(hf: Path, count: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    ids = tokenizer(PROMPT_TEXT * (1 + count // 100)).input_ids[:count]
    assert len(ids) == count
    return ids


def edgeq_artifacts(cache: Path, hf: Path, want_tvm: bool, max_context: int, rebuild_tvm: bool = False,
                    skip: frozenset = frozenset()) -> dict[str, Path]:
    """edgeq's TVM artifacts (each preset, cache sized to the run like the peers'; W4 g128 also with
    int8 activations, ``act_bits=8``) and the W4 g128 KV-cache ONNX file, built once into the cache
    (``rebuild_tvm``: the TVM artifacts compiled again, after a change to edgeq's kernels)."""
    import shutil

    from edgeq.generation import BuildOptions, _generation_artifacts, build_generation_artifact, compile_generation_artifact

    paths = {}
    for tag, preset in EDGEQ_PRESETS.items():
        options = BuildOptions(preset=preset, embedding_bits=4, max_context=max_context,
                               out_dir=cache / f"edgeq-smollm2-{tag}-e4")
        folder = options.tvm_folder(Path(options.out_dir))
        int8_folder = folder.with_name(folder.name + "-a8")
        if rebuild_tvm:
            for old in (folder, int8_folder):
                shutil.rmtree(old, ignore_errors=True)
        if want_tvm and f"edgeq-tvm {tag}" not in skip:
            paths[f"tvm-{tag}"] = build_generation_artifact(hf, "tvm", options, progress=print)
        if tag == "w4g128":
            paths[f"onnx-{tag}"] = build_generation_artifact(hf, "onnxruntime", options, progress=print)
            if want_tvm and f"edgeq-tvm {tag} a8" not in skip:
                found = _generation_artifacts(int8_folder, cache_form_recorded=True)  # older cache forms: compiled again
                paths[f"tvm-{tag}-a8"] = found[0] if found else compile_generation_artifact(
                    paths[f"onnx-{tag}"], int8_folder, "cpu", max_context, print, act_bits=8)
    return paths


def read_bandwidth_gbs(threads: int, mib: int = 512) -> float:
    """Memory read bandwidth (GB/s): the best of five sums of a ``mib`` MiB float32 tensor with
    PyTorch at ``threads`` threads, far larger than the caches."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def decode_bytes(name: str, path: Path, size: int, context: int) -> float | None:
    """Bytes one decode step reads from memory: the weights (the whole tied table for the
    lm_head) plus, for edgeq, the KV cache at ``context`` tokens; None where unknown."""
    if name.startswith("edgeq-tvm"):
        meta = json.loads(path.with_suffix(".json").read_text())
        g = meta["generation"]
        return meta["weight_bytes"] + 2 * g["num_layers"] * g["num_kv_heads"] * g["head_dim"] * 4 * context
    if name in ("llama.cpp", "onnxruntime-genai") or name.startswith("edgeq-onnx"):
        return float(size)
    return None


def genai_model(cache: Path, hf: Path) -> Path:
    out = cache / "genai-smollm2-int4"
    if (out / "genai_config.json").exists():
        return out
    site = genai_python(cache)
    env = {**os.environ, "PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"}
    tmp = out.with_name(out.name + ".tmp")
    log = cache / "genai-builder.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(tmp),
                               "-p", "int4", "-e", "cpu", "-c", str(cache / "genai-builder-cache")], env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"onnxruntime-genai's model builder failed; see {log}")
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- one measurement per process

def run_edgeq(kind: str, path: Path, ids: list[int], new: int, threads: int) -> dict:
    from edgeq.runtime.generation import Generation, OrtCausalLMSession
    from edgeq.runtime.tokenizer import load_tokenizer

    if kind == "tvm":
        from edgeq.runtime.tvm_generation import TvmCausalLMSession

        session = TvmCausalLMSession(path, threads=threads)
    else:
        session = OrtCausalLMSession(path, threads=threads, accuracy_level=int(kind[-1]))
    tokenizer = load_tokenizer(path.parent)
    Generation(session, tokenizer, ids[:16], max_new_tokens=8, eos_token_ids=[]).run()  # warm-up
    stats = Generation(session, tokenizer, ids, max_new_tokens=new, eos_token_ids=[]).run().stats
    return {"ttft_s": stats.ttft_s, "prefill_tok_s": stats.prefill_tok_s, "decode_tok_s": stats.decode_tok_s,
            "new_tokens": stats.new_tokens}


def run_genai(path: Path, ids: list[int], new: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(path))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def once(prompt, count):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + count, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.array(prompt, dtype=np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        made = 1
        while not generator.is_done() and made < count:
            generator.generate_next_token()
            made += 1
        end = time.perf_counter()
        return start, first, end, made

    once(ids[:16], 8)
    start, first, end, made = once(ids, new)
    return {"ttft_s": first - start, "prefill_tok_s": len(ids) / (first - start),
            "decode_tok_s": (made - 1) / (end - first) if made > 1 else None, "new_tokens": made}


def run_torch(hf: Path, ids: list[int], new: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    prompt = torch.tensor([ids])

    def timed(count, tokens=prompt):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(tokens, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                           pad_token_id=model.config.eos_token_id)
        return time.perf_counter() - start

    timed(8, prompt[:, :16])
    first = timed(1)
    whole = timed(new)
    return {"ttft_s": first, "prefill_tok_s": len(ids) / first, "decode_tok_s": (new - 1) / (whole - first),
            "new_tokens": new}


def run_llama_cpp(gguf: Path, prompt: int, new: int, threads: int) -> dict:
    binary = llama_bench()
    done = subprocess.run([str(binary), "-m", str(gguf), "-t", str(threads), "-p", str(prompt), "-n", str(new),
                           "-r", "2", "-o", "json"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"llama-bench failed: {done.stderr.strip()[-500:]}")
    rows = json.loads(done.stdout)
    pp = next(r for r in rows if r["n_prompt"] == prompt and r["n_gen"] == 0)["avg_ts"]
    tg = next(r for r in rows if r["n_gen"] == new and r["n_prompt"] == 0)["avg_ts"]
    return {"ttft_s": prompt / pp, "prefill_tok_s": pp, "decode_tok_s": tg, "new_tokens": new,
            "peak_mib": peak_rss_mib(children=True)}


def measure_one(spec: dict) -> dict:
    name, path = spec["name"], Path(spec["path"])
    ids, new, threads = spec["ids"], spec["new"], spec["threads"]
    if name.startswith("edgeq-tvm"):
        result = run_edgeq("tvm", path, ids, new, threads)
    elif name.startswith("edgeq-onnx"):
        result = run_edgeq(f"ort{spec['accuracy']}", path, ids, new, threads)
    elif name == "onnxruntime-genai":
        result = run_genai(path, ids, new, threads)
    elif name == "pytorch":
        result = run_torch(path, ids, new, threads)
    else:
        result = run_llama_cpp(path, len(ids), new, threads)
    result.setdefault("peak_mib", peak_rss_mib())
    return result


def in_fresh_process(spec: dict, cache: Path, timeout: float = 900) -> dict:
    env = dict(os.environ)
    if spec["name"] == "onnxruntime-genai":
        env["PYTHONPATH"] = f"{genai_python(cache)}:{env.get('PYTHONPATH', '')}"
    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{spec['name']} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run

def profile_edgeq(path: Path, ids: list[int], threads: int, steps: int = 20) -> dict:
    """Per-kernel time of one decode step (at the prompt's context) and one prefill of the prompt
    on an edgeq TVM artifact, VM builtins each their own row (``edgeq.runtime.profile.vm_op_times``),
    and the uninstrumented minimum of each over the same number of runs."""
    import numpy as np

    from edgeq.runtime.profile import vm_op_times
    from edgeq.runtime.tvm_generation import TvmCausalLMSession

    session = TvmCausalLMSession(path, threads=threads)
    if not session.cache_in_place:
        raise RuntimeError(f"{path}: the profile steps back over an in-place cache; this artifact appends")
    prompt = np.array(ids, np.int64)

    def prefill():
        session.reset()
        session.prefill(prompt)

    def decode():  # each step at the prompt's context: the cache grows by one, then is cut back
        session.decode(5)
        session.position -= 1

    out = {}
    for kind, run, repeat in (("prefill", prefill, 3), ("decode", decode, steps)):
        prefill()
        run()  # warm-up
        plain = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            plain.append(time.perf_counter() - start)
        ops = vm_op_times(session.vm, run, repeat, split_builtins=True)
        out[kind] = {"min_ms": min(plain) * 1e3, "ops": [o.to_dict() for o in ops]}
    return out


def profile_table(profile: dict, top: int = 14) -> str:
    """Kernel kinds (instances summed) by time, per step, for prefill and decode side by side."""
    merged = {}
    for kind in ("decode", "prefill"):
        total = sum(o["total_ms"] for o in profile[kind]["ops"])
        for o in profile[kind]["ops"]:
            row = merged.setdefault(o["op"], {"decode": [0, 0.0], "prefill": [0, 0.0]})
            row[kind][0] += o["calls"]
            row[kind][1] += 100 * o["total_ms"] / total
    order = sorted(merged, key=lambda k: -(merged[k]["decode"][1] + merged[k]["prefill"][1]))[:top]
    rows = [[k[:60], merged[k]["decode"][0], f"{merged[k]['decode'][1]:.1f}", merged[k]["prefill"][0],
             f"{merged[k]['prefill'][1]:.1f}"] for k in order]
    rows.append(["VM calls per step (kernels + builtins)", sum(o["calls"] for o in profile["decode"]["ops"]), "",
                 sum(o["calls"] for o in profile["prefill"]["ops"]), ""])
    return markdown_table(["kernel or VM builtin", "decode calls", "decode %", "prefill calls", "prefill %"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rows take turns this many times; the median is kept")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out (e.g. llama.cpp,edgeq-tvm)")
    parser.add_argument("--no-append", action="store_true", help="print the table without writing RESULTS.md")
    parser.add_argument("--rebuild-tvm", action="store_true", help="compile edgeq's TVM artifacts again (after a kernel change)")
    parser.add_argument("--profile", action="store_true",
                        help="per-kernel profile of one decode step and one prefill of edgeq's W4 g128 act_bits=8 artifact, "
                             "instead of the speed table")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        if spec["name"] == "profile":
            print(json.dumps(profile_edgeq(Path(spec["path"]), spec["ids"], spec["threads"])))
        else:
            print(json.dumps(measure_one(spec)))
        return 0

    from edgeq.models.smollm2 import find_smollm2_gguf

    cache = CACHE
    cache.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    gguf = find_smollm2_gguf()
    hf = hf_folder(cache)
    ids = prompt_ids(hf, args.prompt_tokens)
    artifacts = edgeq_artifacts(cache, hf, "edgeq-tvm" not in skip, args.prompt_tokens + args.new_tokens, args.rebuild_tvm,
                                frozenset(skip))
    if args.profile:
        return profile_main(args, cache, artifacts["tvm-w4g128-a8"], ids)
    rows = {}  # name -> (spec, size bytes, note)
    for tag in EDGEQ_PRESETS:
        if f"tvm-{tag}" in artifacts:
            lib = artifacts[f"tvm-{tag}"]
            rows[f"edgeq-tvm {tag}"] = ({"path": str(lib)}, lib.stat().st_size, f"TVM, {EDGEQ_PRESETS[tag]}, lm_head 4-bit")
        if f"tvm-{tag}-a8" in artifacts:
            lib = artifacts[f"tvm-{tag}-a8"]
            rows[f"edgeq-tvm {tag} a8"] = ({"path": str(lib)}, lib.stat().st_size,
                                          f"TVM, {EDGEQ_PRESETS[tag]}, lm_head 4-bit, act_bits=8 (int8 dot products)")
    onnx_path = artifacts["onnx-w4g128"]
    onnx_size = folder_bytes(onnx_path.parent, ("*.onnx", "*.onnx.data", "*.data"))
    rows["edgeq-onnx w4g128 acc4"] = ({"path": str(onnx_path), "accuracy": 4}, onnx_size,
                                      "onnxruntime, MatMulNBits int8 activations")
    rows["edgeq-onnx w4g128 acc0"] = ({"path": str(onnx_path), "accuracy": 0}, onnx_size,
                                      "onnxruntime, float activations")
    if "onnxruntime-genai" not in skip:
        genai = genai_model(cache, hf)
        rows["onnxruntime-genai"] = ({"path": str(genai)}, folder_bytes(genai, ("*.onnx", "*.onnx.data")),
                                     "its builder, -p int4 -e cpu")
    if "llama.cpp" not in skip:
        llama_bench()
        rows["llama.cpp"] = ({"path": str(gguf)}, gguf.stat().st_size, "llama-bench -r 2, Q4_1 GGUF")
    if "pytorch" not in skip:
        rows["pytorch"] = ({"path": str(hf)}, folder_bytes(hf, ("*.safetensors",)), "generate(), float32")
    rows = {k: v for k, v in rows.items() if k.split(" ")[0] not in skip and k not in skip}

    measured: dict[str, list[dict]] = {name: [] for name in rows}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        for name, (spec, _, _) in rows.items():
            full = {"name": name.replace(" ", "-"), "ids": ids, "new": args.new_tokens, "threads": args.threads, **spec}
            result = in_fresh_process(full, cache)
            measured[name].append(result)
            print(f"round {round_ + 1} {name}: prefill {result['prefill_tok_s']:.0f} tok/s, "
                  f"decode {result['decode_tok_s']:.0f} tok/s", flush=True)

    def median(name, key):
        values = [r[key] for r in measured[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    load_after = os.getloadavg()[0]
    summary = {name: {key: median(name, key) for key in ("ttft_s", "prefill_tok_s", "decode_tok_s", "peak_mib",
                                                         "new_tokens")} for name in rows}
    peers = [n for n in rows if not n.startswith("edgeq")]
    best_prefill = max((summary[n]["prefill_tok_s"] for n in peers), default=None)
    best_decode = max((summary[n]["decode_tok_s"] for n in peers), default=None)
    bandwidth = read_bandwidth_gbs(args.threads)
    mean_context = args.prompt_tokens + args.new_tokens / 2
    headers = ["runtime", "prefill tok/s", "decode tok/s", "decode ms/token", "MB read/token", "bandwidth bound ms",
               "TTFT ms", "peak MiB", "size MiB", "new tokens", "prefill / best peer", "decode / best peer", "notes"]
    table_rows = []
    for name, (spec, size, note) in rows.items():
        s = summary[name]
        read = decode_bytes(name, Path(spec["path"]), size, mean_context)
        table_rows.append([name, f"{s['prefill_tok_s']:.0f}", f"{s['decode_tok_s']:.0f}", f"{1e3 / s['decode_tok_s']:.2f}",
                           f"{read / 1e6:.0f}" if read else "", f"{read / bandwidth / 1e6:.2f}" if read else "",
                           f"{s['ttft_s'] * 1e3:.0f}",
                           f"{s['peak_mib']:.0f}", f"{size / 2**20:.1f}", f"{s['new_tokens']:.0f}",
                           f"{s['prefill_tok_s'] / best_prefill:.2f}x" if best_prefill else "",
                           f"{s['decode_tok_s'] / best_decode:.2f}x" if best_decode else "", note])
    table = markdown_table(headers, table_rows)
    print(table)
    notes = (f"SmolLM2-135M-Instruct, prompt {args.prompt_tokens} tokens, {args.new_tokens} new, {args.threads} threads, "
             f"median of {args.rounds} rounds (rows take turns; each a fresh process after a warm-up). CPU flags: "
             f"{cpu_flags()}. The machine is shared with other jobs and noisy (1-minute load average {load_before:.1f} "
             f"before, {load_after:.1f} after, on {os.cpu_count()} CPUs): differences under ~15% are not significant, "
             "and spinning thread pools (TVM's, onnxruntime's) suffer most when the CPUs are oversubscribed. Peak MiB is the process's maximum RSS (Python rows include the interpreter and torch, "
             "imported by edgeq). TTFT is prefill plus the first token's pick; llama.cpp's is prompt / its prefill "
             "rate. Ratios are to the best non-edgeq row. edgeq's TVM cache is compiled for prompt + new tokens, as "
             "onnxruntime-genai's max_length and llama-bench's context are sized to the run. Bandwidth bound: the bytes "
             f"one decode step reads (weights, the whole tied table for the lm_head; edgeq's rows add the KV cache at "
             f"the mean context of {mean_context:.0f} tokens; the peers' rows their file size) over the read bandwidth "
             f"measured here, {bandwidth:.1f} GB/s (PyTorch sum of 512 MiB at {args.threads} threads): the shortest "
             "possible decode step.")
    if not args.no_append:
        append_results("Generation speed: SmolLM2-135M, KV cache, edgeq vs llama.cpp, onnxruntime-genai, PyTorch",
                       table, notes)
    print(notes)
    return 0


def profile_main(args, cache: Path, artifact: Path, ids: list[int]) -> int:
    load_before = os.getloadavg()[0]
    profile = in_fresh_process({"name": "profile", "path": str(artifact), "ids": ids, "threads": args.threads}, cache)
    load_after = os.getloadavg()[0]
    table = profile_table(profile)
    notes = (f"{artifact}: one decode step at a context of {args.prompt_tokens} tokens (minimum of 20 uninstrumented: "
             f"{profile['decode']['min_ms']:.2f} ms) and one prefill of {args.prompt_tokens} tokens (minimum of 3: "
             f"{profile['prefill']['min_ms']:.1f} ms), {args.threads} threads; % of the instrumented time summed over "
             "the VM's calls (a Python hook around each call: it adds microseconds per call and lets the thread "
             "pool idle between kernels, so small and parallel kernels read high). Kernel instances are summed by "
             f"kind; VM builtins are rows of their own. CPU flags: {cpu_flags()}. 1-minute load average "
             f"{load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs.")
    print_and_record("Generation profile: SmolLM2-135M edgeq TVM W4 g128 act_bits=8, per kernel", table, notes,
                     record=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
