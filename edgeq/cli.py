"""The ``edgeq`` command line, in the shape of tvmc and llama-quantize."""

from __future__ import annotations

import argparse
import json
import sys
import time

from edgeq.errors import EdgeqError


def _cmd_demo(args) -> int:
    from edgeq.demo import demo_table, run_demo

    start = time.perf_counter()
    report = run_demo(args.out, recipe=args.recipe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(demo_table(report))
        print(f"\nartifacts in {report.out_dir}/  ({time.perf_counter() - start:.1f} s)")
    return 0


def _cmd_compile(args) -> int:
    import edgeq

    results = []
    for target in args.target:
        art = edgeq.compile(args.model, target=target, out_dir=args.out)
        results.append({"target": art.target, "artifact": str(art.path), "bytes": art.size_bytes,
                        "compile_seconds": round(art.compile_seconds, 3)})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from edgeq._table import format_table

        rows = [[r["target"], r["artifact"], f"{r['bytes'] / 1024:.1f} KiB", f"{r['compile_seconds']:.2f} s"] for r in results]
        print(format_table(["target", "artifact", "size", "compile time"], rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="Quantize, export, compile and validate models for edge targets.")
    parser.add_argument("--version", action="version", version="edgeq 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in digits CNN")
    p.add_argument("--out", default="edgeq-demo", help="folder for the artifacts (default: %(default)s)")
    p.add_argument("--recipe", default="w8a8", help="recipe preset (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("compile", help="compile an ONNX model with TVM for one or more targets")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--target", action="append", required=True, help="target name (repeatable): see edgeq.targets")
    p.add_argument("-o", "--out", default=".", help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeqError as exc:
        print(f"edgeq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
