"""edgeq generate: stream text from a model or a generation artifact, then print time to first
token, prefill and decode tokens/s.

    edgeq generate smollm2 --prompt "What is the capital of France?" --chat
    edgeq generate smollm2 --executor tvm --max-new-tokens 64 --prompt "Once upon a time"
    edgeq generate edgeq-generate/smollm2-w4g128-rtn-e4 --prompt "Hello" --json
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from edgeq.commands._args import fraction, non_negative_float, non_negative_int, positive_int

    p = sub.add_parser("generate", help="generate text with a model or a generation artifact (KV cache)")
    p.add_argument("model", help="smollm2, a Hugging Face model folder, a .gguf file, an artifact folder, a KV-cache .onnx file "
                                 "or a compiled generation artifact")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template (one user turn)")
    p.add_argument("--system", default=None, help="with --chat: a system message")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="(default: %(default)s)")
    p.add_argument("--executor", choices=("torch", "onnxruntime", "tvm"), default="onnxruntime",
                   help="(default: %(default)s)")
    p.add_argument("--device", default=None, help="with --executor tvm: rpc://HOST:PORT of a device running the artifact")
    p.add_argument("--preset", default=None,
                   help="models only: quantization preset, or float (default: w4g128-rtn)")
    p.add_argument("--embedding-bits", type=int, choices=(0, 4, 8), default=4,
                   help="models only: bits of the tied embedding/lm_head table, 0 for float (default: %(default)s)")
    p.add_argument("--target", default="cpu", help="models with --executor tvm: compile target (default: %(default)s)")
    p.add_argument("--max-context", type=positive_int, default=None,
                   help="models with --executor tvm: tokens the compiled cache holds "
                        "(default: the model's, at most 2048)")
    p.add_argument("-o", "--out", default=None,
                   help="models only: folder caching the quantized export and compiled artifact "
                        "(default: edgeq-generate/NAME-PRESET)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 is greedy (default: %(default)s)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=fraction, default=None, help="sample among the most likely tokens up to probability P")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of the sampler (reproducible samples)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of the executor (default: its own)")
    p.add_argument("--json", action="store_true", help="print the text, token ids and timings as JSON (no streaming)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeq.generation import load_generator

    _check_arguments(args)

    progress = None if args.json else (lambda message: print(f"edgeq generate: {message}", file=sys.stderr))
    generator = load_generator(args.model, executor=args.executor, preset=args.preset,
                               out_dir=args.out, threads=args.threads, device=args.device,
                               embedding_bits=args.embedding_bits or None, target=args.target,
                               max_context=args.max_context, progress=progress)
    try:
        return _generate(args, generator)
    finally:
        close = getattr(generator.session, "close", None)  # a device serves one session at a time
        if close:
            close()


def _check_arguments(args) -> None:
    """The device URL, preset and target are checked before a model is loaded, quantized,
    exported or compiled (minutes of work that a typo would otherwise waste)."""
    from edgeq.recipes import resolve_recipe
    from edgeq.targets.registry import get_target

    if args.device is not None:
        from edgeq.runtime.rpc import parse_device_url

        parse_device_url(args.device)
    if args.preset not in (None, "", "float"):
        resolve_recipe(args.preset)
    get_target(args.target)


def _generate(args, generator) -> int:
    generation = generator.start(args.prompt, chat=args.chat, system=args.system, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
        result = generation.run()
        print(json.dumps({"model": args.model, "executor": generator.executor,
                          "artifact": str(generator.artifact) if generator.artifact else None,
                          "text": result.text, "prompt_ids": result.prompt_ids, "token_ids": result.token_ids,
                          **result.stats.as_dict()}, indent=2))
        return 0
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    from edgeq._table import format_table

    stats = generation.result.stats
    decode = f"{stats.decode_tok_s:.1f}" if stats.decode_tok_s else "-"
    print(format_table(["executor", "prompt tokens", "new tokens", "TTFT", "prefill tok/s", "decode tok/s", "stop"],
                       [[generator.executor, stats.prompt_tokens, stats.new_tokens, f"{stats.ttft_s * 1e3:.1f} ms",
                         f"{stats.prefill_tok_s:.1f}", decode, stats.finish_reason]]))
    return 0
