"""edgeq run: run an ONNX file, a compiled artifact or a PyTorch model on an executor and save
its outputs (tvmc run's shape).

    edgeq run model.onnx --inputs in.npz -o out.npz                     # onnxruntime
    edgeq run out/model.cpu.so --inputs seeded --seed 1 -o out.npz     # TVM here
    edgeq run out/model.arm64.so --device rpc://127.0.0.1:9090 -o out.npz
    edgeq run ./my-llama --inputs seeded --executor onnxruntime        # exported first, in a temporary folder

The executor follows from what is named (onnxruntime for ``.onnx``, TVM for a compiled artifact,
PyTorch for a model); ``--executor`` picks another where one applies: a model runs on
onnxruntime after a float export, on TVM after an export and a ``cpu`` compile.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

EXECUTORS = ("onnxruntime", "tvm", "torch")


def register(sub) -> None:
    from edgeq.commands._args import non_negative_int

    p = sub.add_parser("run", help="run an ONNX file, a compiled artifact or a model on an executor; save the outputs (.npz)")
    p.add_argument("model", help="an .onnx file, a compiled artifact (edgeq compile), or a model: a built-in name, a Hugging "
                                 "Face folder, a .gguf file, FILE.py:FUNCTION, or a .safetensors from edgeq quantize")
    p.add_argument("--inputs", default="seeded", help="X.npz (by input name, else in order), X.npy (one input), digits, "
                                                      "or seeded (random arrays from --seed; default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of --inputs seeded (default: %(default)s)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a symbolic input dim for seeded inputs")
    p.add_argument("--executor", choices=EXECUTORS, help="default: onnxruntime for .onnx, tvm for an artifact, torch for a model")
    p.add_argument("--device", help="rpc://HOST:PORT or tracker://HOST:PORT/KEY (TVM RPC), or armv7 / hexagon-sim, for an "
                                    "artifact not built for this host")
    p.add_argument("--source", metavar="FACTORY", help="for a file quantized from a Python factory: that factory again")
    p.add_argument("-o", "--out", help="write the outputs to this .npz (by output name)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def what_is(name: str) -> str:
    """``onnx``, ``artifact`` (a compiled library with its .json) or ``model``."""
    path = Path(name)
    if path.suffix == ".onnx":
        return "onnx"
    if path.is_file() and path.with_suffix(".json").is_file() and path.suffix not in (".safetensors", ".gguf", ".py"):
        return "artifact"
    return "model"


def run(args) -> int:
    from edgeq._io import check_output_file
    from edgeq.commands.validate import parse_dims
    from edgeq.errors import RuntimeExecError

    dims = parse_dims(args.dim)
    if args.out:
        check_output_file(args.out)
    if args.device:
        from edgeq.commands._args import check_device

        check_device(args.device)
    kind = what_is(args.model)
    executor = args.executor or {"onnx": "onnxruntime", "artifact": "tvm", "model": "torch"}[kind]
    if kind == "onnx" and executor != "onnxruntime":
        raise RuntimeExecError(f"{args.model}: an ONNX file runs on onnxruntime; for {executor}, compile it first "
                               f"(edgeq compile {args.model} --target cpu) and run the artifact")
    if kind == "artifact" and executor != "tvm":
        raise RuntimeExecError(f"{args.model}: a compiled artifact runs on TVM, not {executor}")
    if args.device and (kind != "artifact" and executor != "tvm"):
        raise RuntimeExecError("--device runs compiled artifacts: give one (edgeq compile), or --executor tvm")
    with tempfile.TemporaryDirectory(prefix="edgeq-run-") as work:
        names, inputs, make = _prepare(args, kind, executor, dims, Path(work))
        from edgeq.runtime.executors import executor_output_names, run_once

        start = time.perf_counter()
        ex, outputs = run_once(make, inputs)
        seconds = time.perf_counter() - start
    out_names = executor_output_names(ex, len(outputs))
    if args.out:
        _save_npz(args.out, dict(zip(out_names, outputs)))
    result = {"model": args.model, "executor": getattr(ex, "name", executor), "inputs": args.inputs,
              "seconds": round(seconds, 4), "out": args.out,
              "outputs": [{"name": n, "dtype": str(o.dtype), "shape": list(o.shape),
                           "min": _stat(o, np.min), "max": _stat(o, np.max), "mean": _stat(o, np.mean)}
                          for n, o in zip(out_names, outputs)]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from edgeq._table import format_table

    rows = [[o["name"], o["dtype"], "x".join(map(str, o["shape"])) or "scalar", f"{o['min']:.4g}", f"{o['max']:.4g}",
             f"{o['mean']:.4g}"] for o in result["outputs"]]
    print(format_table(["output", "dtype", "shape", "min", "max", "mean"], rows,
                       title=f"{args.model} on {result['executor']} ({seconds * 1000:.1f} ms)"))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _prepare(args, kind: str, executor: str, dims: dict, work: Path):
    """(input names, input arrays, a function that makes the executor)."""
    import functools

    from edgeq.runtime.executors import OrtExecutor

    if kind == "onnx":
        return _onnx_inputs(args, Path(args.model), dims) + (functools.partial(OrtExecutor, args.model),)
    if kind == "artifact":
        from edgeq.runtime.report import artifact_executor
        from edgeq.targets.compile import Artifact

        make = artifact_executor(args.model, args.device)  # refuses a foreign artifact without --device first
        art = Artifact.load(args.model)
        specs = [(t["name"], t["dtype"], t["shape"]) for t in art.inputs]
        return _arrays(args, specs, dims) + (make,)
    return _model(args, executor, dims, work)


def _onnx_inputs(args, path: Path, dims: dict):
    from edgeq._inputs import onnx_inputs
    from edgeq.targets.compile import load_onnx

    return _arrays(args, onnx_inputs(load_onnx(path, load_external_data=False)), dims)


def _arrays(args, specs, dims: dict) -> tuple[list[str], list[np.ndarray]]:
    """The inputs ``--inputs`` names for inputs described by ``specs`` (name, dtype, shape)."""
    from edgeq._inputs import random_arrays
    from edgeq.errors import ModelFileError
    from edgeq.runtime.inputs import digits_inputs

    names = [name for name, _, _ in specs]
    if args.inputs in ("seeded", "random"):
        return names, list(random_arrays(specs, seed=args.seed, dims=dims).values())
    if args.inputs == "digits":
        return names, digits_inputs()
    path = Path(args.inputs)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such input file")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = [data] if isinstance(data, np.ndarray) else (
            [data[n] for n in names] if set(names) <= set(data.keys()) else [data[k] for k in data.keys()])
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable .npy/.npz file ({type(exc).__name__})") from None
    if len(arrays) != len(names):
        raise ModelFileError(f"{path}: holds {len(arrays)} arrays, the model takes {len(names)} inputs ({', '.join(names)})")
    return names, arrays


def _model(args, executor: str, dims: dict, work: Path):
    import functools

    import edgeq
    from edgeq.model_spec import example_inputs, load_model
    from edgeq.runtime.executors import OrtExecutor, TorchExecutor, TvmExecutor

    loaded = load_model(args.model, factory=args.source)
    example = example_inputs(loaded, seed=args.seed)
    specs = [(f"input{i}" if len(example) > 1 else "input", t.numpy().dtype,
              [dims.get(f"dim{a}", s) for a, s in enumerate(t.shape)]) for i, t in enumerate(example)]
    if args.inputs in ("seeded", "random"):
        names, arrays = [s[0] for s in specs], [t.numpy() for t in example]
    else:
        names, arrays = _arrays(args, specs, dims)
    if executor == "torch":
        return names, arrays, functools.partial(TorchExecutor, loaded.module)
    import torch

    onnx_path = edgeq.export(loaded.module, tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays),
                             work / "model.onnx")
    if executor == "onnxruntime":
        return names, arrays, functools.partial(OrtExecutor, onnx_path)
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=work)
    return names, arrays, functools.partial(TvmExecutor, artifact.path)


def _stat(array: np.ndarray, fn) -> float:
    return float(fn(array.astype(np.float64))) if array.size else float("nan")


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """The outputs by name, written whole or not at all."""
    from edgeq._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
