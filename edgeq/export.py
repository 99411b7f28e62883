"""``edgeq.export``: a quantized (or float) PyTorch model to an ONNX file, on torch's dynamo exporter.

QDQ layers leave as standard QuantizeLinear/DequantizeLinear around float Conv/MatMul. Weight-only
layers leave through the export rules their modules register (swapped in by ``edgeq.export_rules``)
as ``edgeq.LowBitLinear`` nodes with flat function bodies; ``weight_format`` then says which of them become standard ONNX:

* ``"auto"`` (default): 4- and 8-bit layers (and 2-bit at opset >= 25) as uint4/uint8/uint2
  initializers with blocked DequantizeLinear + MatMul, which stock onnxruntime fuses into its fast
  MatMulNBits kernel; 3-bit (no standard dtype), and 2-bit below opset 25, stay ``LowBitLinear``.
* ``"dequantize_linear"``: as auto, but a 2-bit layer below opset 25 is an error naming the opset.
* ``"edgeq"``: every weight-only layer as ``LowBitLinear`` (packed uint8, what TVM reads best:
  its importer cannot read int4/int2 initializers).

A packed table shared by two consumers (a tied embedding and ``lm_head``) stays packed so that
the file holds it once. These rewrites of torch's ONNX are the registered ``export`` pipeline
(``edgeq.export_passes``, one pass each). The file is checked with ``onnx.checker`` and written
atomically, external data included: on any failure nothing is left at ``path``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch
from torch import nn

from edgeq import export_kv, tasks
from edgeq._io import atomic_dir, atomic_path, check_output_file
from edgeq.errors import ExportError
from edgeq.export_passes import EXPORT_PIPELINE
from edgeq.export_passes.lower_to_dequantize_linear import INT2_OPSET
from edgeq.export_rules import export_twins
from edgeq.opset import translation_table
from edgeq.pass_manager import run_passes
from edgeq.quant.weight_only import WeightOnlyLinear

DEFAULT_OPSET = 21
MIN_OPSET, MAX_OPSET = 18, 28  # function bodies need BitwiseAnd (18); onnxruntime loads up to 28
WEIGHT_FORMATS = ("auto", "dequantize_linear", "edgeq")
# protobuf cannot serialize 2 GiB; beyond this the weights go to an external data file
EXTERNAL_DATA_THRESHOLD = 1 << 30


def export(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: Sequence[Mapping[int, str]] | None = None,
    weight_format: str = "auto",
    external_data: bool | str | None = None,
    kv_cache: bool = False,
    max_context: int | None = None,
) -> Path:
    """Export ``model`` (a module, or a model name ``edgeq.load_model`` takes) to ``path`` and
    return the path.

    ``dynamic_batch`` makes the first dimension of every input symbolic (``batch``);
    ``dynamic_dims`` names more per input (``[{0: "batch", 1: "seq"}]``). A HuggingFace causal LM
    given ``input_ids`` exports as ``input_ids [batch, seq] -> logits`` without KV cache.
    ``external_data``: True or a file name relative to ``path``'s folder puts the weights there;
    None does so only for models too large for one protobuf.
    ``kv_cache``: a causal LM exports with its KV cache as inputs and outputs, one file for prefill
    and decode (``edgeq.export_kv`` gives the signature; ``example_inputs`` is then unused);
    ``max_context`` is recorded in its generation metadata (default: the model's
    ``max_position_embeddings``).
    """
    path = Path(path)
    if isinstance(model, str):  # a model name (edgeq.model_spec): its own example inputs unless given
        from edgeq.model_spec import example_inputs as model_examples, load_model

        loaded = load_model(model)
        model = loaded.module
        if example_inputs is None and not kv_cache:
            example_inputs = model_examples(loaded)
    _check_options(model, opset, weight_format, path, external_data)
    if example_inputs is None and not kv_cache:
        raise ExportError("example_inputs are needed (only kv_cache=True builds its own)")
    if example_inputs is None:
        example_inputs = ()
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    generation = None
    if kv_cache:
        if not export_kv.is_causal_lm(model):
            raise ExportError(f"kv_cache=True needs a HuggingFace causal LM; {type(model).__name__} is not one")
        geometry = export_kv.cache_shape(model.eval())
        generation = export_kv.generation_metadata(model, *geometry, max_context)
        model = export_kv.CausalLMWithCache(model, geometry[0])
        args, dynamic_shapes = export_kv.example_and_shapes(model.lm, *geometry)
        input_names, output_names = export_kv.input_names(geometry[0]), export_kv.output_names(geometry[0])
    else:
        signature = tasks.wrap(model, args)
        if signature.task is not None:
            model = signature.module
            input_names, output_names = input_names or signature.input_names, output_names or signature.output_names
            dynamic_dims = dynamic_dims or signature.dynamic_dims
    input_names = list(input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]))
    output_names = list(output_names or ["output"])
    if dynamic_dims is None and dynamic_batch:
        dynamic_dims = [{0: "batch"} for _ in args]
    if generation is None:
        args, dynamic_shapes = _dynamic_shapes(args, dynamic_dims)
    model = model.eval()
    try:
        with export_twins(model), _quiet_exporter(), _multi_output_rules_tried_on_their_op(), torch.no_grad():
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True,
                custom_translation_table=translation_table(),
                verbose=False,
            )
        proto = program.model_proto
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"torch.onnx export of {type(model).__name__} failed: {_first_line(exc)}") from None
    standard = weight_format != "edgeq"
    proto, _ = run_passes(proto, EXPORT_PIPELINE, checker=False, progress=False, copy=False, options={  # checker: once, below
        "expand_packed_weights": {"opset": opset, "standard": standard},
        "lower_to_dequantize_linear": {"opset": opset, "keep_lowbit_linear": not standard},
    })
    if generation is not None:
        export_kv.finish_proto(proto, generation)
    if external_data is None:
        external_data = _initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    if external_data:
        data_name = external_data if isinstance(external_data, str) else f"{path.name}.data"
        _save_with_external_data(proto, path, data_name)
    else:
        _check(proto)
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
    return path


def _check_options(model: nn.Module, opset: int, weight_format: str, path: Path, external_data) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET}")
    if weight_format not in WEIGHT_FORMATS:
        raise ExportError(f"unknown weight_format {weight_format!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    if weight_format == "dequantize_linear" and opset < INT2_OPSET:
        for name, m in model.named_modules():
            if isinstance(m, WeightOnlyLinear) and m.bits == 2:
                raise ExportError(
                    f"{name}: 2-bit weights as standard int2/uint2 DequantizeLinear need opset {INT2_OPSET} "
                    f"(asked for {opset}); use opset={INT2_OPSET} or weight_format='edgeq'"
                )
    check_output_file(path)
    if isinstance(external_data, str):
        check_output_file(external_data_location(path, external_data))


def external_data_location(path: Path, name: str) -> Path:
    """Where a relative external data file goes; refused if it leaves the model's folder, is the
    model file itself, or is a folder."""
    folder = path.parent.resolve()
    target = (folder / name).resolve()
    if Path(name).is_absolute() or folder not in target.parents:
        raise ExportError(f"external data path {name!r} leaves the output folder {path.parent}: give a name relative to it")
    if target == path.resolve():
        raise ExportError(f"external data path {name!r} is the model file {path.name} itself: give the data another name")
    if target.is_dir():
        raise ExportError(f"external data path {name!r} is a folder: name a file")
    return target


def _save_with_external_data(proto: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Model and data file written in a temporary folder beside ``path``, checked, then moved."""
    target = external_data_location(path, data_name)
    check_output_file(target)
    with atomic_dir(path) as tmp:
        staged = Path(tmp) / path.name
        (Path(tmp) / data_name).parent.mkdir(parents=True, exist_ok=True)
        try:
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        except Exception as exc:
            raise ExportError(f"{path}: cannot write external data {data_name!r}: {_first_line(exc)}") from None
        _check(str(staged))
        target.parent.mkdir(parents=True, exist_ok=True)
        staged_data = Path(tmp) / data_name
        if staged_data.exists():
            os.replace(staged_data, target)
        os.replace(staged, path)


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model fails onnx.checker: {_first_line(exc)}") from None


def _initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def _dynamic_shapes(args: tuple, dynamic_dims):
    """torch.export specializes a dimension of size 1: such dynamic dims are widened to 2."""
    if not dynamic_dims:
        return args, None
    if len(dynamic_dims) != len(args):
        raise ExportError(f"dynamic_dims names {len(dynamic_dims)} inputs, the model takes {len(args)}")
    dims: dict[str, torch.export.Dim] = {}
    widened, shapes = [], []
    for a, named in zip(args, dynamic_dims):
        for axis in named:
            if a.shape[axis] == 1:
                a = torch.cat([a, a], dim=axis)
        widened.append(a)
        shapes.append({axis: dims.setdefault(name, torch.export.Dim(name, min=1, max=1 << 16)) for axis, name in named.items()})
    return tuple(widened), tuple(shapes)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress lines and warnings; edgeq reports its own outcome."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _multi_output_rules_tried_on_their_op():
    """The exporter's optimizer (``optimize=True``) tries each onnxscript rewrite rule on every
    node. For a rule whose pattern has several output nodes (onnxscript 0.7: SlicesSplit, two
    Slices of one input -> one Split) the matcher first lists the whole graph, whatever the node:
    quadratic in the nodes, 28-43 of the 61-82 CPU-s of SmolLM2-135M's export (5-8 s with this).
    For the export's duration such a rule is tried only on nodes of its first output node's op
    type, the only nodes the matcher can match there: the same rewrites, the same file
    (tests/export/test_export_invariance.py)."""
    from onnxscript import rewriter

    try:  # onnxscript's internals as of 0.7; another version runs its optimizer as it ships
        from onnxscript.rewriter import _basics, _matcher

        shipped = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError):
        yield
        return

    class FirstOpMatcher(_matcher.SimplePatternMatcher):
        def match(self, model, graph_or_function, node, **kwargs):
            op = self.pattern.output_nodes[0].op_identifier()
            if op is not None and node.op_type != op[1]:
                return _basics.MatchResult().fail(f"not a {op[1]}")
            return super().match(model, graph_or_function, node, **kwargs)

    rules = []
    for rule in shipped:
        matcher = getattr(rule, "_matcher", None)
        if type(matcher) is _matcher.SimplePatternMatcher and not matcher.pattern.has_single_output_node:
            rule = copy.copy(rule)
            rule._matcher = FirstOpMatcher(matcher.pattern)
        rules.append(rule)
    rewriter._DEFAULT_REWRITE_RULES = tuple(rules)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = shipped


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line, without terminal colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
