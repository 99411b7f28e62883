"""A KV-cache ONNX file (``edgeq.export(..., kv_cache=True)``) as one Relax module with two
entry points over one set of weights:

* ``prefill(input_ids [1, seq], attention_mask [1, past + seq], position_ids [1, seq], *past)``
  with ``seq`` symbolic up to ``prefill_chunk``;
* ``decode`` the same with ``seq = 1`` (bound before lowering, so its kernels are GEMVs).

Both compute only the last position's logits ``[1, 1, vocab]``, which is all a generation step
uses, so the ``lm_head`` runs on one row per prefill call (``last_position_only``) and only one row
travels back from a device. The cache is the model's own ``past``/``present`` tensors, written in
place where the attention is recognised (``gqa_attention``: each cache a ``[1, kv_heads,
max_context, head_dim]`` array, ``past`` given by an int8 ``[past]`` argument's shape, the
caches after it): a session keeps the cache arrays in the runtime's memory (on the device over RPC)
and passes the same arrays to every call, bound once on the host, which return the logits alone
(``CACHE_BOUND``: no 60 cache handles back per call, nor 60 shape checks); in the form the attention is not recognised in (GPT-2), they return ``(logits,
*present)`` and the ``present`` arrays are the next call's ``past``. ``past`` is
bounded by ``max_context`` (``tir_var_upper_bound``), so Relax plans every intermediate buffer
statically for the largest step. The two functions read the same ``Constant`` objects, which the
VM stores once; the packed weights go through edgeq's lowerings like any other artifact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.errors import CompileError

FUNCTIONS = {"prefill": "prefill", "decode": "decode"}
DEFAULT_PREFILL_CHUNK = 256
# the artifact's ``generation["cache"]``: how a session passes the cache (see ``cache_form``);
# CACHE_IN_PLACE is the in-place form of artifacts compiled before CACHE_KEPT, which also return the caches
CACHE_KEPT, CACHE_IN_PLACE, CACHE_APPENDING = "kept", "in_place", "appending"
# CACHE_BOUND: CACHE_KEPT with the caches after cache_length (``caches_after_length``), bound by the session;
# CACHE_KEPT itself is the form of artifacts compiled before it
CACHE_BOUND = "bound"


def generation_settings(metadata: dict, max_context: int | None, prefill_chunk: int | None, path) -> dict:
    """The artifact's ``generation`` entry: the file's metadata with the compiled context limit
    (``max_context``, else the file's), the longest prefill call, the functions' names and batch 1."""
    limit = max_context if max_context is not None else metadata.get("max_context")
    if limit is None:
        raise CompileError(f"{path}: the file records no maximum context: give max_context / --max-context N")
    if int(limit) < 1:
        raise CompileError(f"{path}: max_context must be a positive number of tokens, got {limit}")
    chunk = min(int(limit), prefill_chunk or DEFAULT_PREFILL_CHUNK)
    if chunk < 1:
        raise CompileError(f"{path}: prefill_chunk must be a positive number of tokens, got {prefill_chunk}")
    return {**metadata, "max_context": int(limit), "prefill_chunk": chunk, "batch": 1, "functions": dict(FUNCTIONS)}


def generation_module(model: onnx.ModelProto, settings: dict, target: str):
    """(the Relax module with ``prefill`` and ``decode``, the batch-1 last-position ONNX model it
    was imported from; see the module docstring)."""
    from tvm import relax

    from edgeq.targets.cpu_pipeline import is_cpu
    from edgeq.targets.decode_attention import fuse_decode_attention
    from edgeq.targets.gqa_attention import grouped_query_attention
    from edgeq.targets.importer import import_onnx
    from edgeq.targets.mean_of_squares import fuse_mean_of_squares
    from edgeq.targets.registry import get_target
    from edgeq.targets.residual_norm import fuse_add_rms_norm
    from edgeq.targets.specialize import specialize
    from edgeq.targets.trivial_transpose import transposes_as_reshapes

    model = last_position_only(specialize(model, {"batch": 1}))
    for value in model.graph.output:  # the specialization leaves the outputs' batch named
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param == "batch":
            dims[0].Clear()
            dims[0].dim_value = 1
    mod = import_onnx(model, target=target)
    main = mod["main"]
    bound = {"past": settings["max_context"]}
    prefill = main.with_attr("global_symbol", FUNCTIONS["prefill"]).with_attr(
        "tir_var_upper_bound", {**bound, "seq": settings["prefill_chunk"]})
    one_token = relax.transform.BindSymbolicVars({"seq": 1})
    decode = one_token(_module_of(relax.utils.copy_with_new_vars(main)))["main"]
    decode = decode.with_attr("global_symbol", FUNCTIONS["decode"]).with_attr("tir_var_upper_bound", bound)
    out = mod.clone()
    del out["main"]
    out[FUNCTIONS["prefill"]] = prefill
    out[FUNCTIONS["decode"]] = decode
    out = grouped_query_attention(out, FUNCTIONS.values(), settings["max_context"])
    if is_cpu(get_target(target).tvm()):  # fewer kernels per layer: CPU kernels
        out = fuse_decode_attention(out, [FUNCTIONS["decode"]])  # one attention kernel per layer at decode
        out = fuse_mean_of_squares(out, FUNCTIONS.values())  # RMSNorm's power inside its mean
        out = fuse_add_rms_norm(out, FUNCTIONS.values())  # the residual add inside the next RMSNorm
        out = transposes_as_reshapes(out, [FUNCTIONS["decode"]])  # one row: the head transposes move no data
    if _takes_cache_length(out):
        out = returning_logits_only(out, FUNCTIONS.values())
        if cache_form(out) == CACHE_KEPT:
            out = caches_after_length(out, FUNCTIONS.values())
    return out, model


def caches_after_length(mod, functions):
    """``mod`` with the Relax ``functions`` (names), which take ``(input_ids, attention_mask,
    position_ids, *caches, cache_length)`` and return the logits alone, taking ``(input_ids,
    attention_mask, position_ids, cache_length, *caches)`` with ``num_input`` 4 (``CACHE_BOUND``):
    the caches, the same arrays every call until a reset, are trailing arguments a session binds
    once, and the VM checks only the four inputs each call (the caches' shapes are static and the
    session's own)."""
    from tvm import relax

    out = mod.clone()
    for name in functions:
        func = mod[name]
        params = list(func.params)
        reordered = [*params[:3], params[-1], *params[3:-1]]
        out[name] = relax.Function(reordered, func.body, func.ret_ty, func.is_pure, func.attrs).with_attr("num_input", 4)
    return out


def with_workspace(settings: dict, mod) -> dict:
    """The ``generation`` entry with ``workspace`` naming the function that makes the decode step's
    workspace (``lift_decode_workspace``), when the lowered Relax module ``mod`` has one: a session
    makes it once and binds it to ``decode``; and ``workspace_logits``, the index of the workspace's
    item that ``decode`` writes its logits into and returns, when it does (over RPC a function
    cannot return an array it was passed, so a session reads the logits from that item there)."""
    from edgeq.targets.lift_decode_workspace import returned_workspace_item, workspace_name

    name = workspace_name(FUNCTIONS["decode"])
    if name not in [gv.name_hint for gv in mod.get_global_vars()]:
        return settings
    item = returned_workspace_item(mod, FUNCTIONS["decode"])
    return {**settings, "workspace": name, **({"workspace_logits": item} if item is not None else {})}


def returning_logits_only(mod, functions):
    """``mod`` with the Relax ``functions`` (names), which end in ``(logits, *written caches)``,
    returning the logits alone: the caches are the arrays the caller passed, written in place, so
    handing them back only costs the VM a tuple and the caller one handle per cache and call.
    Unchanged (the caches still returned, ``CACHE_IN_PLACE``) when a written cache is read by nothing
    but the result: without it its write would be dead code."""
    from tvm import relax

    out = mod.clone()
    for name in functions:
        func = mod[name]
        body = func.body
        block, last = body.blocks[-1], body.blocks[-1].bindings[-1]
        if not (last.var.same_as(body.body) and isinstance(last.value, relax.Tuple)):
            raise CompileError(f"{name}: expected the function to end in a tuple of the logits and the caches")
        read = set()
        for binding in (b for blk in body.blocks for b in blk.bindings if not b.same_as(last)):
            relax.analysis.post_order_visit(binding.value, lambda e: read.add(e) if isinstance(e, relax.Var) else None)
        if any(cache not in read for cache in last.value.fields[1:]):
            return mod
        logits = last.value.fields[0]
        result = relax.Var(last.var.name, logits.ty)
        block = type(block)([*block.bindings[:-1], relax.VarBinding(result, logits)])
        out[name] = relax.Function(func.params, relax.SeqExpr([*body.blocks[:-1], block], result), logits.ty,
                                   func.is_pure, func.attrs)
    return relax.transform.Normalize()(out)


def cache_form(mod) -> str:
    """``CACHE_KEPT`` when ``decode`` takes full-length caches that it writes in place, with a last
    ``cache_length`` argument (``gqa_attention``), and returns the logits alone (``CACHE_IN_PLACE``
    where it also returns the caches: ``returning_logits_only``; ``CACHE_BOUND`` where the caches
    come after ``cache_length``: ``caches_after_length``); else ``CACHE_APPENDING``: each call
    returns its ``past`` with the new positions appended (attention in a form not recognised, GPT-2)."""
    from tvm import relax

    from edgeq.targets.gqa_attention import CACHE_LENGTH

    if not _takes_cache_length(mod):
        return CACHE_APPENDING
    decode = mod[FUNCTIONS["decode"]]
    if isinstance(decode.body.body.ty, relax.TupleType):
        return CACHE_IN_PLACE
    return CACHE_BOUND if decode.params[3].name == CACHE_LENGTH else CACHE_KEPT


def _takes_cache_length(mod) -> bool:
    from edgeq.targets.gqa_attention import CACHE_LENGTH

    names = [p.name for p in mod[FUNCTIONS["decode"]].params]
    return CACHE_LENGTH in names[-1:] + names[3:4]


# ops whose first input is the activations and that act row by row (an lm_head)
_ROW_WISE_HEADS = ("MatMul", "LowBitLinear")


def last_position_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """``logits`` of the last position only: a ``Slice`` of the hidden states before the
    ``lm_head`` when a matmul produces the logits (the head then runs on one row), else of the
    logits themselves."""
    graph = model.graph
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None:
        raise CompileError("the KV-cache file has no node producing 'logits'")
    consts = [numpy_helper.from_array(np.array(v, np.int64), f"edgeq.last_position.{k}")
              for k, v in (("starts", [-1]), ("ends", [np.iinfo(np.int64).max]), ("axes", [1]), ("shape", [1, 1, 0]))]
    graph.initializer.extend(consts)
    names = [c.name for c in consts[:3]]
    if head.op_type in _ROW_WISE_HEADS:
        # the Slice's length is 1 only for seq >= 1, which TVM cannot prove: a Reshape to
        # [1, 1, hidden] makes the head's input static, so it gets the one-row kernels
        last, sliced = f"{head.input[0]}.last_position", f"{head.input[0]}.last_position.sliced"
        at = list(graph.node).index(head)
        graph.node.insert(at, helper.make_node("Reshape", [sliced, consts[3].name], [last], name="edgeq.last_position.one_row"))
        graph.node.insert(at, helper.make_node("Slice", [head.input[0], *names], [sliced], name="edgeq.last_position"))
        head.input[0] = last
    else:
        all_logits = "logits.all_positions"
        head.output[list(head.output).index("logits")] = all_logits
        graph.node.append(helper.make_node("Slice", [all_logits, *names], ["logits"], name="edgeq.last_position"))
    logits = next(o for o in graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].Clear()
    logits.type.tensor_type.shape.dim[1].dim_value = 1
    return model


def _module_of(func):
    import tvm

    return tvm.IRModule({"main": func})
