"""edgeq export: a model saved by ``edgeq quantize`` (.safetensors), or any model
``edgeq.model_spec`` names quantized with a preset (or float), to an ONNX file.

    edgeq export smollm2-w4.safetensors --embedding-bits 4 -o smollm2.onnx
    edgeq export digits-cnn --preset w8a8 -o digits.onnx
    edgeq export smollm2 --preset w4g128-rtn --embedding-bits 4 -o smollm2.onnx --external-data
    edgeq export smollm2 --preset w4g128-rtn --embedding-bits 4 --kv-cache -o smollm2-kv.onnx
    edgeq export cnn-w8.safetensors --source cnn.py:make_model -o cnn.onnx
"""

from __future__ import annotations

import json
import time

from edgeq.models import ALIASES, BUILTIN_MODELS


def register(sub) -> None:
    from edgeq.commands._args import positive_int

    p = sub.add_parser("export", help="export a model (quantized by edgeq quantize or with a preset, or float) to ONNX")
    aliases = ", ".join(f"{old} for {new}" for old, new in ALIASES.items())
    p.add_argument("model", help=f"a .safetensors file from edgeq quantize, a built-in model ({', '.join(BUILTIN_MODELS)}; "
                                 f"also accepted: {aliases}), a Hugging Face folder (safetensors), a .gguf file, or a "
                                 f"factory FILE.py:FUNCTION / package.module:FUNCTION")
    p.add_argument("--preset", help="quantization preset or recipe JSON (default: float)")
    p.add_argument("--source", metavar="FACTORY", help="for a file quantized from a Python factory: that factory again "
                                                       "(edgeq runs no code a file names)")
    p.add_argument("--embedding-bits", type=int, choices=(2, 3, 4, 8),
                   help="LLMs: quantize the embedding table (RTN) and share it with a tied lm_head")
    p.add_argument("--group-size", type=positive_int, default=128, help="group size for --embedding-bits (default: %(default)s)")
    p.add_argument("-o", "--out", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: edgeq's)")
    p.add_argument("--weight-format", choices=("auto", "dequantize_linear", "edgeq"), default="auto",
                   help="auto: standard int4/uint8 DequantizeLinear+MatMul where ONNX has the dtype; edgeq: LowBitLinear")
    p.add_argument("--external-data", nargs="?", const=True, default=None, metavar="NAME",
                   help="store weights in a data file beside the model (a name relative to its folder)")
    p.add_argument("--kv-cache", action="store_true",
                   help="LLMs: export with the KV cache as inputs/outputs (one file for prefill and decode)")
    p.add_argument("--max-context", type=int, metavar="N",
                   help="with --kv-cache: the context limit recorded for generation (default: the model's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def load_model(name: str, preset: str | None, embedding_bits: int | None, group_size: int, load: bool = True,
               factory: str | None = None):
    """(model, example inputs) for any model ``edgeq.model_spec.load_model`` names, quantized as
    asked (``load=False``: a built-in model's example inputs only); ``factory``: the Python
    factory a quantized file was made from."""
    import torch

    import edgeq
    from edgeq.models import builtin_name
    from edgeq.recipes import resolve_recipe

    if name not in BUILTIN_MODELS and name not in ALIASES:
        from edgeq.errors import RecipeError
        from edgeq.model_spec import example_inputs, load_model as load_spec
        from edgeq.quant.serialize import read_metadata

        loaded = load_spec(name, factory=factory)
        if loaded.source == "edgeq-quantized":
            if preset:
                raise RecipeError(f"{name} is already quantized: --preset applies to float models only")
            source = read_metadata(name)["source"]
            if source in BUILTIN_MODELS:
                _, example = load_model(source, None, None, group_size, load=False)
            else:
                example = example_inputs(loaded)
            model = loaded.module
        else:
            example = example_inputs(loaded)
            model = loaded.module
            if preset:
                calib = example_inputs(loaded, batch=32, seq=32)[0] if resolve_recipe(preset).needs_calibration else None
                model = edgeq.quantize(model, preset, calib=[calib] if calib is not None and not calib.is_floating_point() else calib)
        if embedding_bits:
            from edgeq.quant.embedding import quantize_embeddings

            quantize_embeddings(model, embedding_bits, group_size)
        return model, example
    calibrate = bool(preset) and resolve_recipe(preset).needs_calibration
    if builtin_name(name) == "digits-cnn":
        from edgeq.models import digits_data, load_digits_cnn

        data = digits_data()
        if not load:
            return None, data.x_test[:1]
        model = load_digits_cnn()
        if preset:
            model = edgeq.quantize(model, preset, calib=data.x_train[:512] if calibrate else None)
        return model, data.x_test[:1]
    from edgeq.models.smollm2 import load_smollm2

    if not load:
        return None, torch.randint(0, 1000, (1, 8))
    model, tokenizer = load_smollm2()
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    if preset:
        model = edgeq.quantize(model, preset, calib=[ids] if calibrate else None)
    if embedding_bits:
        from edgeq.quant.embedding import quantize_embeddings

        quantize_embeddings(model, embedding_bits, group_size)
    return model, ids.to(torch.int64)


def run(args) -> int:
    import edgeq
    from edgeq.export import DEFAULT_OPSET
    from edgeq.model_info import model_info

    from pathlib import Path

    from edgeq._io import check_output_file
    from edgeq.errors import ExportError
    from edgeq.export import MAX_OPSET, MIN_OPSET, external_data_location

    # checked before the model is loaded and quantized
    check_output_file(args.out)
    if args.opset is not None and not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ExportError(f"opset {args.opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET}")
    if isinstance(args.external_data, str):
        check_output_file(external_data_location(Path(args.out), args.external_data))
    if args.preset:
        from edgeq.recipes import resolve_recipe

        resolve_recipe(args.preset)
    if args.max_context is not None and (not args.kv_cache or args.max_context < 1):
        raise ExportError("--max-context needs --kv-cache and a positive number of tokens")
    model, example = load_model(args.model, args.preset, args.embedding_bits, args.group_size, factory=args.source)
    start = time.perf_counter()
    path = edgeq.export(model, example, args.out, opset=args.opset or DEFAULT_OPSET,
                        weight_format=args.weight_format, external_data=args.external_data,
                        kv_cache=args.kv_cache, max_context=args.max_context)
    seconds = time.perf_counter() - start
    info = model_info(path)
    result = {"model": args.model, "preset": args.preset, "path": str(path), "bytes": info.file_bytes,
              "bits_per_weight": round(info.bits_per_weight, 4), "edgeq_ops": info.edgeq_ops,
              "export_seconds": round(seconds, 2)}
    if args.kv_cache:
        from edgeq.export_kv import read_generation_metadata

        result["generation"] = read_generation_metadata(path)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from edgeq._table import format_table

        print(format_table(["model", "preset", "file", "size", "bits/weight", "export time"],
                           [[args.model, args.preset or "float", str(path), f"{info.file_bytes / 2**20:.2f} MiB",
                             f"{info.bits_per_weight:.3f}", f"{seconds:.1f} s"]]))
    return 0
