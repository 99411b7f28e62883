"""edgeq inspect: what an ONNX file holds (opsets, ops, edgeq ops, weight bytes, bits per weight,
inputs and outputs). Sections are built as a dict first, so an option adds a key and a table."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarize an ONNX file: ops, edgeq ops, weight bytes and bits per weight")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--integer-only", action="store_true",
                   help="check that no float op sits between the input QuantizeLinear and the output DequantizeLinear (exit 1 if one does)")
    p.set_defaults(func=run)


def summary(args) -> dict:
    from edgeq.model_info import model_info

    info = model_info(args.model).to_dict()
    if getattr(args, "integer_only", False):
        info["integer_only"] = integer_only_report(args.model)
    return info


def integer_only_report(path) -> dict:
    """The float ops inside the integer region (``edgeq.passes.integer_check``)."""
    from edgeq.passes.integer_check import float_ops_in_integer_region, has_integer_region
    from edgeq.targets.compile import load_onnx

    model = load_onnx(path)
    has_region = has_integer_region(model)
    floats = [{"node": n.name, "op": n.op_type} for n in float_ops_in_integer_region(model)]
    return {"has_integer_region": has_region, "float_ops": floats, "ok": has_region and not floats}


def run(args) -> int:
    info = summary(args)
    status = 0 if "integer_only" not in info or info["integer_only"]["ok"] else 1
    if args.json:
        print(json.dumps(info, indent=2))
        return status
    print(format_summary(info))
    if "integer_only" in info:
        print("\n" + format_integer_only(info["integer_only"]))
    return status


def format_integer_only(report: dict) -> str:
    from edgeq._table import format_table

    if not report["has_integer_region"]:
        return "integer-only: no (no integer region: the graph input is not quantized or an output is not dequantized)"
    if report["ok"]:
        return "integer-only: yes (no float op between the input QuantizeLinear and the output DequantizeLinear)"
    rows = [[f["node"], f["op"]] for f in report["float_ops"]]
    return format_table(["node", "op"], rows, title=f"integer-only: no, {len(rows)} float op(s) inside the integer region")


def format_summary(info: dict) -> str:
    from edgeq._table import format_table

    def mib(n: int) -> str:
        return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"

    q_bits = info["quantized_bits_per_weight"]
    head = [
        ["file", f"{info['path']} ({mib(info['file_bytes'])})"],
        ["opsets", ", ".join(f"{d} {v}" for d, v in info["opsets"].items())],
        ["edgeq ops", ", ".join(f"{k} x{v}" for k, v in info["edgeq_ops"].items()) or "none"],
        ["weights", f"{info['weights']:,} in {mib(info['weight_bytes'])}: {info['bits_per_weight']:.3f} bits/weight"],
        ["quantized", "none" if q_bits is None else f"{info['quantized_weights']:,} at {q_bits:.3f} bits/weight (scales, zero points, factors included)"],
    ]
    io = [["input", v["name"], v["dtype"], str(v["shape"])] for v in info["inputs"]]
    io += [["output", v["name"], v["dtype"], str(v["shape"])] for v in info["outputs"]]
    ops = [[op, str(n)] for op, n in info["op_histogram"].items()]
    dtypes = [[d, mib(n)] for d, n in info["weight_bytes_by_dtype"].items()]
    return "\n\n".join([
        format_table(["", ""], head),
        format_table(["", "name", "dtype", "shape"], io),
        format_table(["op", "count"], ops),
        format_table(["weight dtype", "bytes"], dtypes),
    ])
