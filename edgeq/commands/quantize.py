"""edgeq quantize: a built-in model and a weight-only preset to a .safetensors file (llama-quantize's shape).

    edgeq quantize smollm2 w4g128-gptq -o smollm2-w4.safetensors --calib 32
    edgeq quantize smollm2 w3-lopro -o smollm2-w3-lopro.safetensors --calib 8
    edgeq quantize digits-cnn w8-rtn -o digits-w8.safetensors
    edgeq quantize smollm2 --bits 2.5 -o smollm2-2.5.safetensors   # a grid per layer within 2.5 bits/weight

Calibration data is loaded and passed when the recipe says it needs it (``needs_calibration``).
"""

from __future__ import annotations

import json
import re
import time

from edgeq.models import BUILTIN_MODELS


def register(sub) -> None:
    from edgeq.commands._args import positive_int

    p = sub.add_parser("quantize", help="weight-only quantize a built-in model and save it (safetensors + recipe)")
    p.add_argument("model", nargs="?", choices=tuple(BUILTIN_MODELS), help="built-in model")
    p.add_argument("preset", nargs="?",
                   help="recipe preset (e.g. w4g128-rtn, w3g128-gptq, w4g128-hadamard-gptq; --list shows all) or recipe JSON")
    p.add_argument("-o", "--out", help="output .safetensors file (required unless --list)")
    p.add_argument("--bits", type=float, default=None,
                   help="instead of a preset: a bits/weight budget (everything stored counted); each layer's GPTQ "
                        "bits and group are chosen from measured sensitivity (edgeq.quant.allocate), the plan is "
                        "saved in the recipe and printed per layer")
    p.add_argument("--list", action="store_true",
                   help="list the presets (method, bits, group, calibration) and exit; with --json as JSON")
    p.add_argument("--calib", type=positive_int, default=32,
                   help="calibration samples for recipes that calibrate (GPTQ, LoPRo): digits images, or SmolLM2 windows "
                        "of 512 tokens (default: %(default)s)")
    p.add_argument("--text", default=None, help="WikiText-2 wiki.test.raw for SmolLM2 calibration (default: ../shared/data)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, quantize_parser=p)


def _model_and_calib(name: str, count: int, text, calibrate: bool):
    """The built-in model and, when ``calibrate``, its calibration batches (else None)."""
    if name == "digits-cnn":
        from edgeq.models import digits_data, load_digits_cnn

        return load_digits_cnn(), digits_data().x_train[:count] if calibrate else None
    from edgeq.models.smollm2 import load_smollm2
    from edgeq.models.wikitext import calibration_windows, wikitext_tokens

    model, tokenizer = load_smollm2()
    if not calibrate:
        return model, None
    calib = calibration_windows(wikitext_tokens(tokenizer, text), count)
    return model, list(calib.split(8))


def run(args) -> int:
    import edgeq
    from edgeq._table import format_table
    from edgeq.quant.serialize import quantized_layers, save_quantized
    from edgeq.recipes import resolve_recipe

    from edgeq._io import check_output_file

    if args.list:
        return _list_presets(args.json)
    if args.model is None or (args.preset is None) == (args.bits is None) or args.out is None:
        args.quantize_parser.error("a model and a preset are required (or --bits instead of the preset, not both), "
                                   "and -o/--out (or --list to see the presets)")
    if args.bits is not None:
        from edgeq.quant.allocate import AllocatedRecipe

        recipe = AllocatedRecipe(skip=("lm_head",), budget=args.bits)
    else:
        recipe = resolve_recipe(args.preset)
    check_output_file(args.out)
    model, calib = _model_and_calib(args.model, args.calib, args.text, recipe.needs_calibration)
    start = time.perf_counter()
    qmodel = edgeq.quantize(model, recipe, calib=calib)
    seconds = time.perf_counter() - start
    path = save_quantized(qmodel, args.out, source=args.model)

    # one row per layer name with the block index folded (model.layers.*.mlp.up_proj x 30)
    rows: dict[str, dict] = {}
    for name, m in quantized_layers(qmodel).items():
        grid = getattr(m, "core", m)  # low-rank methods: the packed core's bits and group
        key = (name if getattr(recipe, "plan", None) is not None else re.sub(r"\.\d+\.", ".*.", name, count=1))
        r = rows.setdefault(key, {"layer": key, "count": 0, "bits": grid.bits, "group_size": grid.group_size,
                                  "weights": 0, "bytes": 0})
        r["count"] += 1
        r["weights"] += m.in_features * m.out_features
        r["bytes"] += m.weight_bytes()
    total_w = sum(r["weights"] for r in rows.values())
    total_b = sum(r["bytes"] for r in rows.values())
    result = {"model": args.model, "recipe": qmodel.edgeq_recipe.to_dict(), "out": str(path), "file_bytes": path.stat().st_size,
              "layers": list(rows.values()), "quantized_weights": total_w, "quantized_bytes": total_b,
              "bits_per_weight": 8 * total_b / total_w, "seconds": round(seconds, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = [[r["layer"], r["count"], r["bits"], r["group_size"], f"{8 * r['bytes'] / r['weights']:.3f}",
              f"{r['bytes'] / 1024:.1f} KiB"] for r in rows.values()]
    table.append(["total", sum(r["count"] for r in rows.values()), "", "", f"{result['bits_per_weight']:.3f}",
                  f"{total_b / 1024:.1f} KiB"])
    print(format_table(["layer", "count", "bits", "group", "bits/weight", "bytes"], table,
                       title=f"{args.model} {args.preset or f'--bits {args.bits}'}: quantized in {seconds:.1f} s"))
    print(f"\nwrote {path} ({result['file_bytes'] / 2**20:.2f} MiB)")
    return 0


def _list_presets(as_json: bool) -> int:
    import edgeq
    from edgeq._table import format_table

    rows = edgeq.list_presets()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(["preset", "method", "bits", "group", "calibration"],
                       [[r["name"], r["method"], r["bits"], r["group_size"] or "channel",
                         "needs data" if r["needs_calibration"] else "none"] for r in rows]))
    return 0
