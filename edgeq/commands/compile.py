"""edgeq compile: an ONNX file to TVM artifacts for one or more named targets.

    edgeq compile model.onnx --target cpu,arm64 -o out
    edgeq compile smollm2-kv.onnx --target arm64 --max-context 1024 -o out   # generation artifact
"""

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
    p.add_argument("--max-context", type=int, metavar="N",
                   help="KV-cache files (edgeq export --kv-cache): tokens the cache holds (default: the file's)")
    p.add_argument("--prefill-chunk", type=int, metavar="N",
                   help="KV-cache files: most tokens one prefill call takes; longer prompts take several (default: 256)")
    p.add_argument("--act-bits", type=int, choices=(8, 32), default=32,
                   help="8: the packed low-bit linears quantize activations to int8 and use the CPU's integer dot "
                        "products (vpdpbusd, sdot) where the target has them; 32 (default): float activations")
    p.add_argument("-o", "--out", default=".", help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def parse_specialize(items) -> dict[str, int]:
    """``["seq=128"]`` -> ``{"seq": 128}``; a CompileError for anything else."""
    from edgeq.commands._args import parse_dim_sizes
    from edgeq.errors import CompileError

    return parse_dim_sizes(items, "--specialize", CompileError)


def run(args) -> int:
    from edgeq._io import check_output_dir
    from edgeq._table import format_table
    from edgeq.commands._args import parse_targets
    from edgeq.targets import compile as compile_model
    from edgeq.targets.compile import load_onnx
    from edgeq.targets.tune import check_database
    from edgeq.targets.registry import get_target

    # every argument is checked before the first target is built: nothing is left half done
    sizes = parse_specialize(args.specialize)
    targets = parse_targets(args.target)
    for target in targets:
        get_target(target).require_compiler()
    check_output_dir(args.out)
    load_onnx(args.model, load_external_data=False)
    if args.tuning_db is not None:
        check_database(args.tuning_db)

    results = []
    for target in targets:
        art = compile_model(args.model, target=target, out_dir=args.out, specialize=sizes or None,
                            tuning_db=args.tuning_db, max_context=args.max_context, prefill_chunk=args.prefill_chunk,
                            act_bits=args.act_bits)
        results.append({"target": art.target, "artifact": str(art.path), "bytes": art.size_bytes,
                        "weight_bytes": art.weight_bytes, "onnx_weight_bytes": art.onnx_weight_bytes,
                        "compile_seconds": round(art.compile_seconds, 3), "act_bits": art.act_bits,
                        "int8_kernels": art.int8_kernels})
        if art.generation:
            results[-1]["generation"] = art.generation
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        rows = [[r["target"], r["artifact"], f"{r['bytes'] / 1024:.1f} KiB",
                 f"{r['weight_bytes'] / 1024:.1f} KiB ({r['weight_bytes'] / max(r['onnx_weight_bytes'], 1):.2f}× ONNX)",
                 f"{r['compile_seconds']:.2f} s"] for r in results]
        print(format_table(["target", "artifact", "size", "weights", "compile time"], rows))
        if any("generation" in r for r in results):
            g = next(r["generation"] for r in results if "generation" in r)
            print(f"generation artifact: prefill/decode, cache of {g['max_context']} tokens, prefill in calls of {g['prefill_chunk']}")
        if sizes:
            fixed = ", ".join(f"{d}={n}" for d, n in sizes.items())
            print(f"specialized {fixed}: these artifacts take only that size")
    return 0
