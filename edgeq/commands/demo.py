"""edgeq demo: the whole pipeline on the built-in digits CNN."""

from __future__ import annotations

import json
import time


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the built-in digits CNN")
    p.add_argument("--out", default="edgeq-demo", help="folder for the artifacts (default: %(default)s)")
    p.add_argument("--recipe", default="w8a8", help="recipe preset (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeq.demo import demo_table, run_demo

    start = time.perf_counter()
    report = run_demo(args.out, recipe=args.recipe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(demo_table(report))
        print(f"\nartifacts in {report.out_dir}/  ({time.perf_counter() - start:.1f} s)")
    return 0
