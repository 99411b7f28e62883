"""edgeq quantize: a model and a weight-only preset to a .safetensors file (llama-quantize's shape).

    edgeq quantize smollm2 w4g128-gptq -o smollm2-w4.safetensors --calib 32
    edgeq quantize smollm2 w3-lopro -o smollm2-w3-lopro.safetensors --calib 8
    edgeq quantize digits-cnn w8-rtn -o digits-w8.safetensors
    edgeq quantize ./my-llama w4g64-rtn -o my-llama-w4.safetensors      # a save_pretrained folder
    edgeq quantize cnn.py:make_model w8-rtn -o cnn-w8.safetensors --per-layer
    edgeq quantize smollm2 --bits 2.5 -o smollm2-2.5.safetensors   # a grid per layer within 2.5 bits/weight

The model is any name ``edgeq.model_spec.load_model`` takes. Calibration data is passed when the
recipe says it needs it (``needs_calibration``): the built-in models' own data, else seeded
inputs shaped as the model takes them. The quantized model's output is then compared with the
float model's on those inputs (``--per-layer``: each quantized layer's output too).
"""

from __future__ import annotations

import json
import re
import time



def register(sub) -> None:
    from edgeq.commands._args import non_negative_int, positive_int

    p = sub.add_parser("quantize", help="quantize a model and save it (safetensors + recipe); report its error against the float model")
    p.add_argument("model", nargs="?", help="a built-in model (digits-cnn, smollm2), a Hugging Face folder (save_pretrained, "
                                             "safetensors), a .gguf file, or a factory FILE.py:FUNCTION / package.module:FUNCTION")
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
                   help="calibration samples for recipes that calibrate (GPTQ, LoPRo): digits images, SmolLM2 windows "
                        "of 512 tokens, or seeded inputs for other models (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the generated inputs (default: %(default)s)")
    p.add_argument("--per-layer", action="store_true", help="also report each quantized layer's output error against the float layer")
    p.add_argument("--text", default=None, help="WikiText-2 wiki.test.raw for SmolLM2 calibration (default: ../shared/data)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, quantize_parser=p)


def _model_and_calib(loaded, count: int, text, calibrate: bool, seed: int):
    """(calibration data or None, the inputs the float comparison runs on)."""
    from edgeq.model_spec import example_inputs

    if loaded.builtin == "digits-cnn":
        from edgeq.models import digits_data

        calib = digits_data().x_train[:count] if calibrate else None
        return calib, (calib if calib is not None else digits_data().x_test[:count],)
    if loaded.builtin == "smollm2":
        from edgeq.models.smollm2 import smollm2_tokenizer
        from edgeq.models.wikitext import calibration_windows, wikitext_tokens

        if not calibrate:
            return None, example_inputs(loaded, batch=1, seed=seed, seq=128)
        batches = list(calibration_windows(wikitext_tokens(smollm2_tokenizer(), text), count).split(8))
        return batches, (batches[0][:1],)
    inputs = example_inputs(loaded, batch=count, seed=seed, seq=32)
    if not calibrate:
        return None, inputs
    calib = list(inputs[0].split(8)) if loaded.kind in ("causal-lm", "encoder", "classifier") and not inputs[0].is_floating_point() else inputs[0]
    return calib, inputs


def run(args) -> int:
    import edgeq
    from edgeq._table import format_table
    from edgeq.model_spec import load_model
    from edgeq.quant.serialize import quantized_layers, save_quantized
    from edgeq.recipes import resolve_recipe
    from edgeq.runtime.float_reference import compare_with_float

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
    loaded = load_model(args.model)
    source = loaded.saved_source  # refuses an already quantized file before any work
    calib, inputs = _model_and_calib(loaded, args.calib, args.text, recipe.needs_calibration, args.seed)
    start = time.perf_counter()
    qmodel = edgeq.quantize(loaded.module, recipe, calib=calib)
    seconds = time.perf_counter() - start
    vs_float = compare_with_float(loaded.module, qmodel, inputs, per_layer=args.per_layer)
    path = save_quantized(qmodel, args.out, source=source)

    # one row per layer name with the block index folded (model.layers.*.mlp.up_proj x 30)
    rows: dict[str, dict] = {}
    for name, m in quantized_layers(qmodel).items():
        grid = getattr(m, "core", m)  # low-rank methods: the packed core's bits and group
        key = (name if getattr(recipe, "plan", None) is not None else re.sub(r"\.\d+\.", ".*.", name, count=1))
        r = rows.setdefault(key, {"layer": key, "count": 0, "form": type(m).__name__, "bits": grid.bits,
                                  "group_size": grid.group_size, "weights": 0, "bytes": 0})
        r["count"] += 1
        r["weights"] += m.in_features * m.out_features
        r["bytes"] += m.weight_bytes()
    total_w = sum(r["weights"] for r in rows.values())
    total_b = sum(r["bytes"] for r in rows.values())
    inputs_label = "calibration inputs" if calib is not None else f"seeded inputs (seed {args.seed})"
    result = {"model": args.model, "recipe": getattr(qmodel, "edgeq_recipe", recipe).to_dict(), "out": str(path), "file_bytes": path.stat().st_size,
              "layers": list(rows.values()), "quantized_weights": total_w, "quantized_bytes": total_b,
              "bits_per_weight": 8 * total_b / total_w, "seconds": round(seconds, 2),
              "vs_float": {"inputs": inputs_label, **vs_float.to_dict()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = [[r["layer"], r["count"], r["form"], r["bits"], r["group_size"], f"{8 * r['bytes'] / r['weights']:.3f}",
              f"{r['bytes'] / 1024:.1f} KiB"] for r in rows.values()]
    table.append(["total", sum(r["count"] for r in rows.values()), "", "", "", f"{result['bits_per_weight']:.3f}",
                  f"{total_b / 1024:.1f} KiB"])
    print(format_table(["layer", "count", "form", "bits", "group", "bits/weight", "bytes"], table,
                       title=f"{args.model} {args.preset or f'--bits {args.bits}'}: quantized in {seconds:.1f} s"))
    print()
    print(format_table(["vs float model", "max abs", "max rel", "cosine", "top-1 agree"], vs_float.rows(),
                       title=f"quantized vs float model on the {inputs_label}"))
    if not vs_float.ok:
        print("warning: the quantized model is far from the float model (cosine or relative error beyond "
              f"{vs_float.tolerance.min_cosine} / {vs_float.tolerance.max_rel}): check the recipe")
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
