"""edgeq profile: latency (median, p90) on onnxruntime, TVM here and TVM on a device, the time
per operator, and the accuracy / latency / size trade-off across recipes; JSON and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    from edgeq.commands._args import non_negative_int, positive_int

    p = sub.add_parser("profile", help="latency and per-operator time on each executor; recipe trade-off plots")
    p.add_argument("model", nargs="?", help="ONNX file (runs on onnxruntime)")
    p.add_argument("artifacts", nargs="*", help="compiled artifacts to time with TVM (here, or on --device)")
    p.add_argument("--device", default=None, help="rpc://HOST:PORT or tracker://HOST:PORT/KEY (TVM RPC), or armv7 / hexagon-sim "
                   "(edgeq's kernel harness under qemu) for artifacts not built for this host")
    p.add_argument("--recipes", default=None, help="comma-separated recipes (float for none): sweep the built-in CNN instead")
    p.add_argument("--target", default="cpu", help="target for --recipes (default: %(default)s)")
    p.add_argument("--inputs", default="random", help="X.npy, X.npz, digits or random (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (random inputs: the first dynamic dim; others: first N samples)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed runs first (default: %(default)s)")
    p.add_argument("--repeat", type=positive_int, default=50, help="timed runs (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=1, help="onnxruntime intra-op threads (default: %(default)s)")
    p.add_argument("--out", default="edgeq-profile", help="folder for the PNG plots and profile.json (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeq._io import check_output_dir
    from edgeq.errors import RecipeError, RuntimeExecError

    out = check_output_dir(args.out)  # created by the first file written into it
    if args.device:
        from edgeq.commands._args import check_device

        check_device(args.device)
    if args.recipes:
        from edgeq.recipes import resolve_recipe
        from edgeq.targets.registry import get_target

        recipes = [r.strip() for r in args.recipes.split(",")]
        if not all(recipes):
            raise RecipeError(f"--recipes {args.recipes!r}: empty recipe name")
        for recipe in recipes:
            if recipe != "float":
                resolve_recipe(recipe)
        get_target(args.target).require_compiler()
        result = _sweep(args, out)
    elif args.model:
        result = _profile(args, out)
    else:
        raise RuntimeExecError("give an ONNX model (and artifacts) to profile, or --recipes for the built-in CNN")
    from edgeq._io import atomic_write_text

    atomic_write_text(out / "profile.json", json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _profile(args, out: Path) -> dict:
    from edgeq.runtime import profile as prof
    from edgeq.runtime.executors import OrtExecutor, TvmExecutor
    from edgeq.runtime.inputs import load_inputs
    from edgeq.runtime.report import suspects_for
    from edgeq.targets.compile import load_onnx

    model = load_onnx(args.model)
    batch_dims = {name: args.batch for name in _first_dynamic_dims(model)}
    inputs = load_inputs(args.inputs, model, samples=None if args.inputs == "random" else args.batch, seed=args.seed, dims=batch_dims)
    suspects = suspects_for(Path(args.model), args.artifacts, args.device, inputs, include_onnx=False)  # checks them first
    executors = [OrtExecutor(args.model, threads=args.threads)]
    latencies = [prof.latency(executors[0], inputs, args.warmup, args.repeat)]
    for suspect in suspects:
        executor = suspect.make()
        latencies.append(prof.latency(executor, inputs, args.warmup, args.repeat))
        if hasattr(executor, "close"):
            executor.close()  # a device serves one RPC session at a time
        else:
            executors.append(executor)
    breakdowns = {f"onnxruntime ({args.threads} thread{'s' if args.threads > 1 else ''})":
                  prof.ort_op_times(args.model, inputs, repeat=min(args.repeat, 20), threads=args.threads)}
    for ex in executors:
        if isinstance(ex, TvmExecutor):
            breakdowns[f"TVM {ex.artifact.target}"] = prof.tvm_op_times(ex, inputs, repeat=min(args.repeat, 20))
    plot = prof.plot_op_times(breakdowns, out / "ops.png", f"{Path(args.model).name}: time per operator kind (batch {args.batch})")
    if not args.json:
        print(prof.summarize(latencies))
        for name, times in breakdowns.items():
            top = ", ".join(f"{op} {ms:.3g} ms" for op, ms in list(prof.by_op(times).items())[:5])
            print(f"{name}: {top}")
        print(f"per-operator plot: {plot}")
    return {"model": args.model, "batch": args.batch, "latency": [lat.to_dict() for lat in latencies],
            "ops": {name: [t.to_dict() for t in times] for name, times in breakdowns.items()}, "plots": [str(plot)]}


def _first_dynamic_dims(model) -> list[str]:
    from edgeq.runtime.inputs import onnx_inputs

    return sorted({shape[0] for _, _, shape in onnx_inputs(model) if shape and isinstance(shape[0], str)})


def _sweep(args, out: Path) -> dict:
    from edgeq._table import format_table
    from edgeq.runtime import profile as prof

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    points, skipped = prof.recipe_sweep(recipes, out, batch=args.batch, warmup=args.warmup, repeat=args.repeat,
                               device=args.device, target=args.target)
    if not points:
        from edgeq.errors import RecipeError

        raise RecipeError("no recipe applied to the built-in CNN: " + "; ".join(f"{r}: {e}" for r, e in skipped.items()))
    plot = prof.plot_tradeoff(points, out / "tradeoff.png",
                              f"built-in digits CNN: accuracy vs latency (batch {args.batch}) and size")
    if not args.json:
        rows = []
        for p in points:
            for name, lat in p.latency.items():
                rows.append([p.recipe, name, f"{p.top1:.2%}", f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}",
                             f"{p.onnx_bytes / 1024:.1f} KiB", f"{p.artifact_bytes / 1024:.1f} KiB"])
        print(format_table(["recipe", "executor", "top-1", "median ms", "p90 ms", "ONNX", "artifact"], rows))
        for recipe, reason in skipped.items():
            print(f"{recipe}: skipped: {reason}")
        print(f"trade-off plot: {plot}")
    return {"recipes": [p.to_dict() for p in points], "skipped": skipped, "batch": args.batch, "plots": [str(plot)]}
