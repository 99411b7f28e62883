"""edgeq targets: the named targets, their TVM target, the compiler that links an artifact for
them and whether it is installed here (tvmc's ``tvmc target`` listing, in a table or JSON).

    edgeq targets
    edgeq targets --json
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("targets", help="list the compile targets, their TVM target and cross compiler, and whether it is installed")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def tvm_target_string(spec: dict) -> str:
    """The target as TVM 0.27 takes it (``tvm.target.Target(json.loads(...))``: the dict form; it no
    longer parses ``llvm -mcpu=...`` strings)."""
    return json.dumps(spec, separators=(",", ":"))


def target_rows() -> list[dict]:
    import shutil

    from edgeq.targets.registry import get_target, target_names

    rows = []
    for name in target_names():
        t = get_target(name)
        if t.artifact == "tar":
            compiler, installed = "none (object archive)", None
        elif t.cross_compiler:
            compiler, installed = t.cross_compiler, shutil.which(t.cross_compiler) is not None
        else:
            compiler, installed = "host c++", shutil.which("c++") is not None or shutil.which("g++") is not None
        rows.append({"name": name, "tvm_target": tvm_target_string(t.tvm_target),
                     "host": tvm_target_string(t.host) if t.host else None, "compiler": compiler,
                     "compiler_package": t.compiler_package, "installed": installed, "description": t.description})
    return rows


def run(args) -> int:
    from edgeq._table import format_table

    rows = target_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    mark = {True: "yes", False: "no", None: "-"}
    print(format_table(["target", "TVM target", "compiler", "installed"],
                       [[r["name"], r["tvm_target"], r["compiler"], mark[r["installed"]]] for r in rows]))
    missing = sorted({r["compiler_package"] for r in rows if r["installed"] is False and r["compiler_package"]})
    if missing:
        print(f"\nmissing compilers install with: apt-get install {' '.join(missing)}")
    return 0
