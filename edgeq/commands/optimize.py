"""edgeq optimize: run graph passes over an ONNX file (optionally verifying each on onnxruntime)."""

from __future__ import annotations

import json


def register(sub) -> None:
    from edgeq.commands._args import non_negative_int

    p = sub.add_parser("optimize", help="run graph passes (fold BN/scales/rotations, integerize, ...) over an ONNX model")
    p.add_argument("model", nargs="?", help="input ONNX file")
    p.add_argument("output", nargs="?", help="output ONNX file")
    p.add_argument("--passes", default=None,
                   help="comma-separated pass or pipeline names (default, export, pre_tvm), in order "
                        "(default: the default pipeline); 'list' prints them")
    p.add_argument("--verify", action="store_true",
                   help="run the model on onnxruntime before and after every pass; stop at the first that changes the outputs")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the verify inputs (default: %(default)s)")
    p.add_argument("--inputs", metavar="NPZ", help="verify on these inputs (an .npz with one array per graph input name)")
    p.add_argument("--keep-float", action="append", default=[], metavar="NODE",
                   help="integerize: keep this node (name or op type) and its region in float (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx

    from edgeq._io import atomic_path, check_output_file
    from edgeq._table import format_table
    from edgeq.errors import PassError
    from edgeq.pass_manager import expand_pipelines
    from edgeq.passes import DEFAULT_PIPELINE, get_pass, get_pipeline, pass_names, pipeline_names, run_passes
    from edgeq.targets.compile import load_onnx  # importing edgeq.targets registers the pre_tvm pipeline

    if args.passes == "list":
        member = {n: ", ".join(p for p in pipeline_names() if n in get_pipeline(p)) for n in pass_names()}
        rows = [[n, member[n], get_pass(n).doc.split(": ", 1)[-1]] for n in pass_names()]
        print(format_table(["pass", "pipelines", "what it does"], rows))
        return 0
    if not (args.model and args.output):
        raise PassError("edgeq optimize needs an input and an output ONNX file (or --passes list)")
    names = [n.strip() for n in args.passes.split(",")] if args.passes is not None else list(DEFAULT_PIPELINE)
    if not all(names):
        raise PassError(f"--passes {args.passes!r}: empty pass name; `edgeq optimize --passes list` names them")
    expand_pipelines(names)  # unknown names fail before any work
    check_output_file(args.output)
    model = load_onnx(args.model)
    options = {"integerize": {"keep_float": args.keep_float}} if args.keep_float else {}
    inputs = _load_inputs(args.inputs) if args.inputs else None
    result, reports = run_passes(model, names, verify=args.verify or inputs is not None, inputs=inputs, seed=args.seed, options=options)
    with atomic_path(args.output) as tmp:
        onnx.save_model(result, str(tmp))
    if args.json:
        print(json.dumps([r.__dict__ for r in reports], indent=2))
    else:
        rows = [[r.name, r.nodes_before, r.nodes_after, "" if r.max_rel_change is None else f"{r.max_rel_change:.2e}"] for r in reports]
        print(format_table(["pass", "nodes before", "nodes after", "max change / scale"], rows))
        print(f"wrote {args.output}")
    return 0


def _load_inputs(path: str) -> dict:
    import numpy as np

    from edgeq.errors import ModelFileError

    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # OSError, ValueError, zipfile.BadZipFile, EOFError: all mean a bad file
        raise ModelFileError(f"{path}: not a readable .npz of inputs ({type(exc).__name__})") from None
