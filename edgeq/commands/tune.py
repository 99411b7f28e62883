"""edgeq tune: search schedules for a model's kernels with meta_schedule, within a time budget;
``edgeq compile --tuning-db DIR`` then builds with them."""

from __future__ import annotations

import json


def register(sub) -> None:
    from edgeq.commands._args import positive_float, positive_int

    p = sub.add_parser("tune", help="tune a model's kernels for a CPU target (meta_schedule) into a database")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--target", default="cpu", help="target name (default: %(default)s; see `edgeq targets`)")
    p.add_argument("--budget", type=positive_float, default=300.0, metavar="SECONDS",
                   help="stop starting new kernels after this many seconds (default: %(default)s)")
    p.add_argument("--trials", type=positive_int, default=16, help="measured candidates per kernel (default: %(default)s)")
    p.add_argument("--specialize", action="append", default=[], metavar="DIM=N",
                   help="fix a symbolic input dimension, as for `edgeq compile` (the same sizes must be compiled)")
    p.add_argument("-o", "--out", required=True, metavar="DB_DIR", help="database folder (kept next to the artifact)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeq._table import format_table
    from edgeq.commands.compile import parse_specialize
    from edgeq.targets.tune import tune

    from edgeq._io import check_output_dir
    from edgeq.targets.compile import load_onnx
    from edgeq.targets.registry import get_target

    sizes = parse_specialize(args.specialize)
    get_target(args.target)
    check_output_dir(args.out)
    load_onnx(args.model, load_external_data=False)
    result = tune(args.model, args.out, target=args.target, budget_s=args.budget,
                  specialize=sizes or None, trials_per_kernel=args.trials)
    summary = {"database": str(result.db_dir), "kernels": len(result.kernels), "tuned": result.tuned,
               "kept_default": result.kept_default, "seconds": round(result.seconds, 1)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        def outcome(name: str) -> str:
            if name in result.kept_default:
                return "default schedule (faster than the tuned one)"
            return "tuned" if name in result.tuned else "default schedule (budget spent)"

        rows = [[name, outcome(name)] for name in result.kernels]
        print(format_table(["kernel", "schedule"], rows,
                           title=f"{len(result.tuned)}/{len(result.kernels)} kernels tuned in {result.seconds:.0f} s -> {result.db_dir}"))
    return 0
