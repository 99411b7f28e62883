"""edgeq compile: an ONNX file to TVM artifacts for one or more named targets."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile an ONNX model with TVM for one or more targets")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--target", action="append", required=True,
                   help="target name, repeatable or comma-separated (see `edgeq targets`)")
    p.add_argument("--specialize", action="append", default=[], metavar="DIM=N",
                   help="fix a symbolic input dimension (e.g. seq=128): the artifact then takes only that size; "
                        "by default symbolic dimensions stay symbolic")
    p.add_argument("--tuning-db", metavar="DB_DIR", help="a database from `edgeq tune`: its kernels use their tuned schedules")
    p.add_argument("--act-bits", type=int, choices=(8, 32), default=32,
                   help="8: the packed low-bit linears quantize activations to int8 and use the CPU's integer dot "
                        "products (vpdpbusd, sdot) where the target has them; 32 (default): float activations")
    p.add_argument("-o", "--out", default=".", help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def parse_specialize(items) -> dict[str, int]:
    """``["seq=128"]`` -> ``{"seq": 128}``; a CompileError for anything else."""
    from edgeq.errors import CompileError

    sizes = {}
    for item in items:
        dim, _, size = item.partition("=")
        if not dim or not size.isdigit():
            raise CompileError(f"--specialize {item!r}: expected DIM=N, e.g. seq=128")
        sizes[dim] = int(size)
    return sizes


def run(args) -> int:
    from edgeq._table import format_table
    from edgeq.targets import compile as compile_model

    sizes = parse_specialize(args.specialize)

    results = []
    targets = [t.strip() for arg in args.target for t in arg.split(",") if t.strip()]
    for target in targets:
        art = compile_model(args.model, target=target, out_dir=args.out, specialize=sizes or None,
                            tuning_db=args.tuning_db, act_bits=args.act_bits)
        results.append({"target": art.target, "artifact": str(art.path), "bytes": art.size_bytes,
                        "weight_bytes": art.weight_bytes, "onnx_weight_bytes": art.onnx_weight_bytes,
                        "compile_seconds": round(art.compile_seconds, 3), "act_bits": art.act_bits,
                        "int8_kernels": art.int8_kernels})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        rows = [[r["target"], r["artifact"], f"{r['bytes'] / 1024:.1f} KiB",
                 f"{r['weight_bytes'] / 1024:.1f} KiB ({r['weight_bytes'] / max(r['onnx_weight_bytes'], 1):.2f}× ONNX)",
                 f"{r['compile_seconds']:.2f} s"] for r in results]
        print(format_table(["target", "artifact", "size", "weights", "compile time"], rows))
        if sizes:
            fixed = ", ".join(f"{d}={n}" for d, n in sizes.items())
            print(f"specialized {fixed}: these artifacts take only that size")
    return 0
