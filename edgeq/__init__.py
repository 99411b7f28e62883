"""edgeq: quantize PyTorch models, export ONNX, compile with TVM, validate against PyTorch.

    qmodel = edgeq.quantize(model, "w8a8", calib=x_train[:512])
    edgeq.export(qmodel, x_test[:1], "model.onnx")
    artifact = edgeq.compile("model.onnx", target="cpu", out_dir="out")
    report = edgeq.validate(qmodel, ["model.onnx", artifact.path], [x_test.numpy()])
"""

from __future__ import annotations

from edgeq.errors import EdgeqError

try:  # torch, onnx and TVM take seconds to load: Ctrl-C here must not end the CLI in a traceback
    from edgeq.runtime.threads import default_tvm_threads

    default_tvm_threads()  # before TVM's thread pool starts: TVM alone would use half the cores on x86
    from edgeq.export import export
    from edgeq.model_spec import example_inputs, load_model
    from edgeq.quant import quantize
    from edgeq.quant.w8a8 import W8A8Recipe
    from edgeq.recipes import PRESETS, Recipe, list_presets
except BaseException as exc:  # KeyboardInterrupt, or an ImportError that Ctrl-C caused
    from edgeq.cli import exit_if_interrupted_cli

    exit_if_interrupted_cli(exc)
    raise

__version__ = "0.1.0"


def compile(onnx_path, target: str = "cpu", out_dir=".", name: str | None = None, specialize: dict | None = None,
            tuning_db=None, max_context: int | None = None, prefill_chunk: int | None = None, act_bits: int = 32):
    """Compile an ONNX file with TVM for a named target (see ``edgeq.targets``);
    symbolic input dimensions stay symbolic unless ``specialize`` fixes them by name,
    e.g. ``{"seq": 128}``; ``tuning_db`` is a folder written by ``edgeq tune``. A KV-cache file
    gives a generation artifact (``prefill``/``decode``) whose cache holds ``max_context`` tokens.
    ``act_bits=8`` quantizes the packed linears' activations to int8 (integer dot products)."""
    from edgeq.targets import compile as _compile

    return _compile(onnx_path, target=target, out_dir=out_dir, name=name, specialize=specialize, tuning_db=tuning_db,
                    max_context=max_context, prefill_chunk=prefill_chunk, act_bits=act_bits)


def validate(reference, artifacts, inputs, tolerance=None, float_reference=None, float_tolerance=None):
    """Run each artifact (an ``.onnx`` file on onnxruntime, a compiled ``.so`` on TVM) on
    ``inputs`` and compare every output with ``reference`` (a torch module, or any model name
    ``edgeq.load_model`` takes), on the same path as ``edgeq validate``. Returns a
    ``ValidationReport`` that iterates over one ``ExecutorResult`` per artifact: ``outputs`` (one
    Numerics per graph output, in order), ``ok`` (all within ``tolerance``, an
    ``edgeq.runtime.validate.Tolerance``) and the first output's figures (``max_abs``, ``cosine``,
    ``top1_agreement``, ...). ``float_reference`` (the float model) adds one result per executor,
    the reference's first, against it (held to ``float_tolerance``, default
    ``edgeq.runtime.float_reference.FLOAT_TOLERANCE``)."""
    from edgeq.runtime.executors import executor_for
    from edgeq.runtime.report import validate as _validate
    from edgeq.runtime.validate import Tolerance

    executors = [executor_for(a) for a in artifacts]
    return _validate(reference, executors, list(inputs), tolerance or Tolerance(), float_reference=float_reference,
                     float_tolerance=float_tolerance)


def compare_with_float(float_model, qmodel, inputs, per_layer: bool = False):
    """The quantized model's outputs (and with ``per_layer`` each quantized layer's) against
    the float model's on ``inputs`` (a tuple of tensors), as ``edgeq quantize`` reports them:
    a ``FloatComparison`` (``outputs``, ``layers``, ``ok``)."""
    from edgeq.runtime.float_reference import compare_with_float as _compare

    return _compare(float_model, qmodel, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), per_layer=per_layer)


def generate(source, prompt, **options):
    """Generate text from ``source`` (``"smollm2"``, a Hugging Face folder or model with
    ``tokenizer=``, a KV-cache ONNX file or a generation artifact folder) on an ``executor``
    (torch, onnxruntime, tvm): greedy by default, sampled with ``temperature`` / ``top_k`` /
    ``top_p`` / ``seed``. Returns a ``GenerationResult`` (text, token ids, TTFT, prefill and decode
    tokens/s), or with ``stream=True`` a ``Generation`` that yields the text as it is produced.
    ``edgeq.generation.load_generator`` keeps a loaded model for several prompts."""
    from edgeq.generation import generate as _generate

    return _generate(source, prompt, **options)


__all__ = ["EdgeqError", "PRESETS", "Recipe", "W8A8Recipe", "compare_with_float", "compile", "example_inputs", "export", "generate",
           "list_presets", "load_model", "quantize", "validate"]
