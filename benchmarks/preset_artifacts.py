"""SmolLM2-135M quantized with a preset, exported, compiled for cpu and arm64 and checked against
the PyTorch quantized model on onnxruntime, TVM on the host and TVM on the emulated arm64 device.

Calibration is that of ``benchmarks/weight_only.py`` (16 windows of 512 tokens drawn, seed 0, from
the WikiText-2 test text after the 20 evaluated windows), so the model is the one its perplexity
rows measured. The quantized model is saved under ``--work`` (and with it the recipe, whose plan an
allocator preset then reuses): a rerun loads it instead of quantizing again (8-9 min for a
``mix*`` preset on a loaded 2-core host, ~30 min under heavier load). A stage that fails is
reported with the preset's and the stage's names, and the other runtimes and presets still run.

    python benchmarks/preset_artifacts.py mix3.25-lopro mix2.5-lopro
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import edgeq  # noqa: E402
from edgeq.errors import EdgeqError  # noqa: E402

CALIB_WINDOWS = 16  # weight_only.py --calib 16: the presets' RESULTS.md rows
EVALUATED_WINDOWS = 20  # weight_only.py --windows 20: calibration is drawn after these
DEFAULT_WORK = Path.home() / ".cache" / "edgeq" / "preset-artifacts"


class StageError(EdgeqError):
    """A stage of one preset's check failed (names the preset and the stage)."""


def stage(preset: str, name: str):
    """Run a stage, turning any failure into a StageError that names the preset and stage."""

    class _Stage:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"[{preset}] {name} ...", flush=True)
            return self

        def __exit__(self, kind, exc, tb):
            self.seconds = time.perf_counter() - self.start
            if exc is None:
                print(f"[{preset}] {name}: {self.seconds:.1f} s", flush=True)
                return False
            if isinstance(exc, KeyboardInterrupt):
                return False
            raise StageError(f"{preset}: {name} failed: {type(exc).__name__}: {exc}") from exc

    return _Stage()


def calibration_batches(tokenizer) -> list[torch.Tensor]:
    from edgeq.models.wikitext import SEQ_LEN, calibration_windows, wikitext_tokens

    tokens = wikitext_tokens(tokenizer)
    return list(calibration_windows(tokens, CALIB_WINDOWS, SEQ_LEN, skip=EVALUATED_WINDOWS, seed=0).split(8))


def _without_plan(recipe) -> dict:
    d = recipe.to_dict()
    d.pop("plan", None)
    return d


def quantized_model(preset: str, work: Path, load_float, tokenizer, times: dict):
    """The preset's quantized SmolLM2: loaded from ``work`` when saved there with the same recipe
    (plan aside), else quantized (with the plan of an earlier run when there is one) and saved.
    ``PRESET.json`` beside the model keeps the recipe with its plan and the quantize time."""
    from edgeq.quant.serialize import load_quantized, read_metadata, save_quantized
    from edgeq.recipes import recipe_from_dict, resolve_recipe

    recipe = resolve_recipe(preset)
    path = work / f"{preset}.safetensors"
    record_path = work / f"{preset}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if path.exists():
        saved = recipe_from_dict(json.loads(read_metadata(path)["recipe"]))
        if _without_plan(saved) == _without_plan(recipe):
            with stage(preset, f"load {path.name}") as s:
                model = load_quantized(path)
            earlier = record.get("quantize_s")
            times["quantize"] = (f"{earlier:.0f} s, " if earlier else "") + f"loaded in {s.seconds:.0f} s"
            return model
        print(f"[{preset}] {path.name} holds another recipe; quantizing again", flush=True)
    if getattr(recipe, "plan", None) == () and "recipe" in record:
        saved = recipe_from_dict(record["recipe"])
        if _without_plan(saved) == _without_plan(recipe):
            print(f"[{preset}] reusing the plan in {record_path.name}", flush=True)
            recipe = saved
    torch.manual_seed(0)
    calib = calibration_batches(tokenizer) if recipe.needs_calibration else None
    with stage(preset, "quantize") as s:
        model = edgeq.quantize(load_float(), recipe, calib=calib)
    times["quantize"] = f"{s.seconds:.0f} s"
    work.mkdir(parents=True, exist_ok=True)
    save_quantized(model, path, source="smollm2")
    tmp = record_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"recipe": model.edgeq_recipe.to_dict(), "quantize_s": s.seconds}, indent=1))
    tmp.rename(record_path)
    return model


PROMPT = "The capital of France is Paris, and the capital of Italy is"
RANDOM_TOKENS = 32  # a second input: seeded random ids, past the prompt's easy tokens
GREEDY_TOKENS = 8  # greedy continuation of the prompt, recomputed over the whole sequence per token
TOL = 1e-4  # the float floor rule's bar (edgeq.runtime.float_floor), as the other SmolLM2 checks


def executors(onnx_path: Path, cpu: Path, arm64: Path | None, device_url: str | None):
    """(name, make) per runtime: onnxruntime, TVM on this host, TVM on the emulated arm64 device."""
    from edgeq.runtime.executors import OrtExecutor, TvmExecutor
    from edgeq.runtime.rpc import RpcExecutor

    out = [("onnxruntime", lambda: OrtExecutor(onnx_path)), ("tvm cpu", lambda: TvmExecutor(cpu))]
    if arm64 is not None and device_url is not None:
        out.append(("tvm arm64 (emulated)", lambda: RpcExecutor(arm64, device_url)))
    return out


def greedy(run, ids: torch.Tensor, steps: int) -> list[int]:
    """``steps`` greedy tokens after ``ids``, each from the logits of the whole sequence so far."""
    seq = ids
    for _ in range(steps):
        logits = torch.as_tensor(run(seq))
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True).to(seq.dtype)], dim=1)
    return seq[0, ids.shape[1]:].tolist()


def fresh(path: Path, than: Path) -> bool:
    """``path`` exists and was written after ``than`` (an artifact of the saved model, not an older one)."""
    return path.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def file_bytes(path: Path) -> int:
    """A file with its external data (``model.onnx.data`` beside an ONNX file)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def check_preset(preset: str, args, device_url: str | None) -> list[dict]:
    """One row per runtime for ``preset`` (see the module docstring)."""
    from edgeq.models.smollm2 import load_smollm2, smollm2_tokenizer
    from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge
    from weight_only import plan_summary, quantized_stats

    tokenizer = smollm2_tokenizer()
    times: dict = {}
    qmodel = quantized_model(preset, args.work, lambda: load_smollm2()[0], tokenizer, times)
    layers, weights, nbytes = quantized_stats(qmodel)
    saved = args.work / f"{preset}.safetensors"
    folder = args.work / preset
    folder.mkdir(parents=True, exist_ok=True)
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    random_ids = torch.randint(0, qmodel.config.vocab_size, (1, RANDOM_TOKENS), generator=torch.Generator().manual_seed(0))
    inputs = {"prompt": prompt, "random": random_ids}

    onnx_path = folder / "model.onnx"
    if args.rebuild or not fresh(onnx_path, saved):
        with stage(preset, "export") as s, torch.no_grad():
            edgeq.export(qmodel, prompt, onnx_path, external_data=True)
        times["export"] = s.seconds
    artifacts = {}
    for target in ("cpu", "arm64"):
        found = sorted((folder / target).glob(f"model.{target}.*so")) if (folder / target).is_dir() else []
        if found and not args.rebuild and fresh(found[0], onnx_path):
            artifacts[target] = found[0]
            continue
        with stage(preset, f"compile {target}") as s:
            artifacts[target] = edgeq.compile(onnx_path, target=target, out_dir=folder / target).path
        times[f"compile {target}"] = s.seconds

    with stage(preset, "PyTorch float32 and float64 references"), torch.no_grad():
        refs = {k: (causal_lm_logits(qmodel, ids), float64_logits(qmodel, ids)) for k, ids in inputs.items()}
        torch_greedy = greedy(lambda seq: causal_lm_logits(qmodel, seq), prompt, GREEDY_TOKENS)

    rows = []
    for name, make in executors(onnx_path, artifacts["cpu"], artifacts.get("arm64"), device_url):
        try:
            with stage(preset, f"run on {name}") as s:
                executor = make()
                try:
                    checks, top1 = {}, []
                    for key, ids in inputs.items():
                        got = executor.run([ids.numpy()])[0]
                        checks[key] = judge(got, *refs[key], bar=TOL)
                        top1.append(float((got.argmax(-1) == refs[key][0].argmax(-1)).mean()))
                    tokens = greedy(lambda seq: executor.run([seq.numpy()])[0], prompt, GREEDY_TOKENS)
                finally:
                    getattr(executor, "close", lambda: None)()  # the device serves one session at a time
        except StageError as exc:  # reported in the table; the other runtimes still run
            print(f"error: {exc}", file=sys.stderr, flush=True)
            rows.append({"preset": preset, "error": str(exc), "ok": False})
            continue
        worst = max(checks.values(), key=lambda c: c.err / c.tol)
        artifact = {"onnxruntime": onnx_path, "tvm cpu": artifacts["cpu"]}.get(name, artifacts["arm64"])
        rows.append({"preset": preset, "bits_per_weight": 8 * nbytes / weights, "layers": layers,
                     "plan": plan_summary(qmodel), "runtime": name, "artifact": str(artifact),
                     "artifact_bytes": file_bytes(artifact), "err": worst.err, "floor": worst.floor,
                     "err_vs_float64": worst.err_vs_float64, "tol": worst.tol,
                     "top1": min(top1), "greedy_equal": tokens == torch_greedy, "greedy": tokens,
                     "torch_greedy": torch_greedy, "ok": all(c.ok for c in checks.values()) and tokens == torch_greedy,
                     "run_s": s.seconds, "times": times})
        print(f"[{preset}] {name}: err {worst.err:.2e} (floor {worst.floor:.2e}, tol {worst.tol:.1e}), top-1 "
              f"{min(top1):.4f}, greedy {'equal' if tokens == torch_greedy else f'{tokens} != {torch_greedy}'}", flush=True)
    if "arm64" in artifacts and device_url is None:
        rows.append({"preset": preset, "bits_per_weight": 8 * nbytes / weights, "layers": layers, "plan": plan_summary(qmodel),
                     "runtime": "tvm arm64 (compiled; not run: --no-device)", "artifact": str(artifacts["arm64"]),
                     "artifact_bytes": file_bytes(artifacts["arm64"]), "ok": None, "times": times})
    return rows


def device(args) -> str | None:
    """The emulated arm64 device's URL, started if it is not running (shared: never stopped here)."""
    if args.no_device:
        return None
    from edgeq.runtime.device import device_status, start_device

    state = device_status("arm64")
    if state is None:
        print("starting the emulated arm64 device (edgeq device start arm64)", flush=True)
        state = start_device("arm64")
    return state.url


def report(rows: list[dict], args) -> None:
    from _results import append_results, cpu_flags, markdown_table

    def seconds(r, key):
        v = r["times"].get(key)
        return "reused" if v is None else (v if isinstance(v, str) else f"{v:.0f} s")

    headers = ["preset", "bits/weight", "runtime", "artifact", "max err / logits scale", "float floor", "bar",
               "err vs float64", "top-1 = PyTorch", f"greedy {GREEDY_TOKENS} = PyTorch", "ok", "run"]
    table = markdown_table(headers, [
        [r["preset"], "", f"**failed**: {r['error']}"] + [""] * (len(headers) - 3) if "error" in r else
        [r["preset"], f"{r['bits_per_weight']:.3f}", r["runtime"], f"{r['artifact_bytes'] / 2**20:.1f} MiB"]
        + (["", "", "", "", "", "", "not run", ""] if r["ok"] is None else
           [f"{r['err']:.2e}", f"{r['floor']:.2e}", f"{r['tol']:.0e}", f"{r['err_vs_float64']:.2e}", f"{r['top1']:.4f}",
            "yes" if r["greedy_equal"] else "**no**", "yes" if r["ok"] else "**FAIL**", f"{r['run_s']:.0f} s"])
        for r in rows])
    print(table)
    per_preset = {}
    for r in rows:
        if "times" in r:
            per_preset.setdefault(r["preset"], r)
    notes = [
        f"SmolLM2-135M-Instruct quantized with each preset (calibration as `benchmarks/weight_only.py --calib {CALIB_WINDOWS}`: "
        f"{CALIB_WINDOWS} windows of 512 WikiText-2 tokens after the {EVALUATED_WINDOWS} evaluated ones, seed 0; lm_head and "
        "the embeddings stay float32), exported to ONNX (edgeq op set, symbolic batch and sequence), compiled with TVM for "
        "`cpu` (this host) and cross-compiled for `arm64`, run on onnxruntime, TVM on this host and TVM on the emulated "
        "arm64 device (qemu-user + RPC).",
        f"Inputs: the prompt {PROMPT!r} and {RANDOM_TOKENS} seeded random ids; the error is "
        "max |runtime - PyTorch float32| / max |PyTorch float32| over all logits, the worse input shown; the float floor "
        f"rule (`edgeq.runtime.float_floor.judge`, bar {TOL:.0e}): error within max(bar, 2 x floor) of PyTorch float32 and "
        "within max(bar, floor) of a float64 evaluation of the same quantized model. top-1: the share of positions whose "
        f"argmax equals PyTorch's (the lower of the two inputs); greedy: {GREEDY_TOKENS} greedy tokens after the prompt equal "
        "PyTorch's quantized model's.",
        "Times per preset: " + "; ".join(
            f"{p}: quantize {seconds(r, 'quantize')}, export {seconds(r, 'export')}, compile cpu {seconds(r, 'compile cpu')}, "
            f"compile arm64 {seconds(r, 'compile arm64')}" for p, r in per_preset.items()) + ".",
        "Plans (layers per option): " + "; ".join(
            f"{p}: " + ", ".join(f"{k} x{v}" for k, v in r["plan"].items()) for p, r in per_preset.items() if r["plan"]) + ".",
        f"CPU flags: {cpu_flags()}.",
    ]
    notes = [n for n in notes if not n.endswith(": .")]  # no preset got that far, or none has a plan
    print("\n".join(notes))
    if not args.no_append:
        append_results("SmolLM2-135M preset artifacts against PyTorch (cpu, arm64)", table, "\n".join(notes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="+", help="preset names (edgeq quantize --list), checked one after the other")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="saved models and artifacts (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine more threads spin; TVM sizes its own pool)")
    p.add_argument("--quantize-only", action="store_true", help="quantize and save each preset, then stop")
    p.add_argument("--rebuild", action="store_true", help="export and compile again even where the files are newer than the model")
    p.add_argument("--no-device", action="store_true", help="cross-compile for arm64 but do not run on the emulated device")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from edgeq.recipes import resolve_recipe

    for preset in args.presets:  # a misspelt preset fails before an hour of work on the others
        resolve_recipe(preset)
    if args.quantize_only:
        from edgeq.models.smollm2 import load_smollm2, smollm2_tokenizer

        tokenizer = smollm2_tokenizer()
        for preset in args.presets:
            quantized_model(preset, args.work, lambda: load_smollm2()[0], tokenizer, {})
        return 0
    url = device(args)
    rows = []
    for preset in args.presets:
        try:
            rows += check_preset(preset, args, url)
        except StageError as exc:  # reported in the table; the other presets still run
            print(f"error: {exc}", file=sys.stderr, flush=True)
            rows.append({"preset": preset, "error": str(exc), "ok": False})
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    report(rows, args)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except EdgeqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
