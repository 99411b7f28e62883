"""edgeq validate: run a model and its compiled artifacts on their executors, compare each with
the reference, and name the first diverging node of any that disagrees."""

from __future__ import annotations

import json


def register(sub) -> None:
    from edgeq.commands._args import cosine, fraction, non_negative_float, non_negative_int, positive_int

    p = sub.add_parser("validate", help="compare executors (onnxruntime, TVM here or on a device) with the reference")
    p.add_argument("model", help="the ONNX file (runs on onnxruntime; artifacts were compiled from it)")
    p.add_argument("artifacts", nargs="*", help="compiled artifacts (edgeq compile) to run with TVM")
    p.add_argument("--device", default=None, help="rpc://HOST:PORT or tracker://HOST:PORT/KEY (TVM RPC), or armv7 / hexagon-sim "
                   "(edgeq's kernel harness under qemu) for artifacts not built for this host")
    p.add_argument("--reference", default="onnxruntime",
                   help="onnxruntime (the model's graph), digits-cnn:RECIPE (the built-in CNN in PyTorch; digits:RECIPE is accepted too), X.onnx, or a PyTorch "
                        "model: FILE.py:FUNCTION, package.module:FUNCTION, a Hugging Face folder (safetensors), X.gguf, "
                        "a .safetensors from `edgeq quantize` (never a pickle: .pt/.pt2/.bin are refused) "
                        "(default: %(default)s)")
    p.add_argument("--float-reference", metavar="MODEL", help="the float model (any model name edgeq takes) as a second "
                   "reference: the reference and every executor are also compared with it, held to --float-min-cosine and "
                   "--float-max-rel, so a quantization that is wrong in PyTorch is caught")
    p.add_argument("--float-max-rel", type=non_negative_float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--float-min-cosine", type=cosine, default=0.95, help="(default: %(default)s)")
    p.add_argument("--inputs", default="random", help="X.npy, X.npz, digits (built-in test set) or random (default: %(default)s)")
    p.add_argument("--samples", type=positive_int, default=None, help="use the first N samples of the inputs")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for random inputs (default: %(default)s)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a dynamic input dim for random inputs")
    p.add_argument("--max-rel", type=non_negative_float, default=0.02, help="max error relative to the reference's scale (default: %(default)s)")
    p.add_argument("--min-cosine", type=cosine, default=0.999, help="(default: %(default)s)")
    p.add_argument("--min-top1", type=fraction, default=0.99, help="top-1 agreement of logits (default: %(default)s)")
    p.add_argument("--int-tolerant", action="store_true", help="hold integer outputs to --max-rel instead of bit-exactness")
    p.add_argument("--exact", action="store_true", help="every output element must equal the reference's (integer-only models)")
    p.add_argument("--no-localize", action="store_true", help="do not search for the first diverging node")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeq.runtime.inputs import load_inputs
    from edgeq.runtime.report import validate_model
    from edgeq.runtime.validate import Tolerance
    from edgeq.targets.compile import load_onnx

    dims = parse_dims(args.dim)
    if args.device:
        from edgeq.commands._args import check_device

        check_device(args.device)
    inputs = load_inputs(args.inputs, load_onnx(args.model), samples=args.samples, seed=args.seed, dims=dims)
    tolerance = Tolerance(max_rel=args.max_rel, min_cosine=args.min_cosine, min_top1=args.min_top1, int_exact=not args.int_tolerant,
                          exact=args.exact)
    label = args.inputs + (f" (seed {args.seed})" if args.inputs == "random" else "") + (f", first {args.samples}" if args.samples else "")
    float_tolerance = Tolerance(max_rel=args.float_max_rel, min_cosine=args.float_min_cosine, min_top1=0.0)
    report = validate_model(args.model, args.artifacts, inputs, reference=args.reference, device=args.device,
                            tolerance=tolerance, localize=not args.no_localize, inputs_label=label,
                            float_reference=args.float_reference, float_tolerance=float_tolerance)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1


def parse_dims(items) -> dict[str, int]:
    """``["seq=8"]`` -> ``{"seq": 8}``; a RuntimeExecError for anything else."""
    from edgeq.commands._args import parse_dim_sizes
    from edgeq.errors import RuntimeExecError

    return parse_dim_sizes(items, "--dim", RuntimeExecError)
