"""A decode step's views over ``past + 1`` positions made at their bound: a Relax module pass, run
after the static memory plan and before ``lift_decode_workspace``.

The attention mask's prelude (positions, the mask's casts, gathers and comparisons) works on
tensors with a dimension of ``past + 1``. The plan gives each a storage sized for ``past``'s upper
bound (``tir_var_upper_bound``), but the view on it has a shape the step computes, so each step
makes its shape (``make_shape``) and view (``alloc_tensor``) again, and the storage stays in the
step with it. When the symbolic dimension is the outermost one that is not 1 (``[1, 1, 1, past +
1]``, ``[1, 1, 1, past + 1, 2]``), the live part of the tensor is a prefix of the bound-sized one,
element for element: the view can have the bound's static shape, and the kernels that read or write
it declare that shape for the buffer and keep their loops over ``past + 1``. The views are then
static, so ``lift_decode_workspace`` makes them once with the rest of the workspace.

A kernel whose buffer's symbolic dimension was a variable it had no other way to learn (``n`` in
``decode_attention``'s mask ``[1, 1, 1, n]``) takes it as a scalar argument instead, given by the
call (``past + 1``). The rewritten calls' scalar arguments (``past``, ``past + 1``) are bound once
per step and passed as variables: the VM boxes each once (``make_prim_value``), not once per call
(one per layer for the attention). A kernel is rewritten as a copy, so a ``prefill`` calling it is
unchanged; a view read by anything but kernels (a builtin, the result) keeps its computed shape.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import relax
from tvm.tirx.buffer import BufferType

_ALLOC_STORAGE = "relax.memory.alloc_storage"
_ALLOC_TENSOR = "relax.memory.alloc_tensor"
BOUNDED_SUFFIX = "_bounded"


def bounded_views(mod: tvm.IRModule, function: str) -> tvm.IRModule:
    """``mod`` with the views of the Relax ``function`` (a name) over a symbolic number of
    positions made at that number's upper bound, and the kernels they are passed to rewritten to
    match (see the module docstring); unchanged when there are none."""
    if function not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    func = mod[function]
    if not isinstance(func, relax.Function) or "tir_var_upper_bound" not in (func.attrs or {}):
        return mod
    bindings = [b for block in func.body.blocks for b in block.bindings]
    views = _bounded_views(mod, func, bindings)
    if not views:
        return mod
    builder = relax.BlockBuilder(mod.clone())
    kernels: dict = {}  # (kernel, its bounded parameters) -> (the copy's GlobalVar, where its added scalars come from)
    renamed = {view: relax.Var(view.name, relax.TensorType(shape, view.ty.dtype)) for view, (shape, _) in views.items()}
    scalars_once: dict = {}  # a scalar argument's expression (its text) -> the variable bound to it once
    blocks = []
    for block in func.body.blocks:
        rebuilt = []
        for binding in block.bindings:
            value = binding.value
            if binding.var in views:
                shape = relax.ShapeExpr(views[binding.var][0])
                rebuilt.append(relax.VarBinding(renamed[binding.var],
                                                relax.Call(value.op, [*value.args[:2], shape, *value.args[3:]], value.attrs, value.ty_args)))
                continue
            bounded = {i: views[a] for i, a in enumerate(_args(value)) if isinstance(a, relax.Var) and a in views}
            if bounded:
                key = (value.op, tuple(sorted((i, tuple(map(int, shape))) for i, (shape, _) in bounded.items())))
                if key not in kernels:
                    kernels[key] = _bounded_kernel(builder, mod[value.op], value.op.name_hint, bounded)
                gv, scalars = kernels[key]
                args = [renamed.get(a, a) if isinstance(a, relax.Var) else a for a in value.args]
                args += [bounded[i][1][d] for i, d in scalars]
                value = relax.Call(gv, [_bound_once(a, scalars_once, rebuilt) for a in args], value.attrs, value.ty_args)
                binding = relax.VarBinding(binding.var, value)
            rebuilt.append(binding)
        blocks.append(type(block)(rebuilt))
    out = builder.get()
    out[function] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)
    called = set()
    for f in out.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, lambda e: called.add(e) if isinstance(e, tvm.ir.GlobalVar) else None)
    for gv in {key[0] for key in kernels} - called:
        del out[gv]
    return relax.transform.Normalize()(out)


@tvm.transform.module_pass(opt_level=0, name="BoundedViews")
class BoundedViews:
    """The pass form of ``bounded_views`` for the named functions."""

    def __init__(self, functions):
        self.functions = list(functions)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for name in self.functions:
            mod = bounded_views(mod, name)
        return mod


def _bound_once(arg, scalars_once: dict, bindings: list):
    """``arg``, or when it is a symbolic scalar the variable bound to it once (the binding appended
    to ``bindings`` the first time; ``scalars_once``: its text -> the variable)."""
    if not isinstance(getattr(arg, "ty", None), tvm.ir.PrimType) or isinstance(arg, tvm.tirx.IntImm):
        return arg
    text = str(arg)
    if text not in scalars_once:
        scalars_once[text] = relax.Var("scalar", arg.ty)
        bindings.append(relax.VarBinding(scalars_once[text], arg))
    return scalars_once[text]


def _args(value) -> list:
    return list(value.args) if isinstance(value, relax.Call) else []


def _kernel(mod: tvm.IRModule, op):
    if isinstance(op, tvm.ir.GlobalVar) and isinstance(mod[op], tvm.tirx.PrimFunc):
        return mod[op]
    return None


def _bounded_views(mod, func: relax.Function, bindings) -> dict:
    """view variable -> (its shape at the bound, its shape as computed) for each view on a storage
    of constant size whose one symbolic dimension is its outermost that is not 1, within the
    storage at the bound, and passed to kernels only (as a buffer of the same pattern)."""
    analyzer = tvm.sym.Analyzer()
    bounds = {str(k): int(v) for k, v in func.attrs["tir_var_upper_bound"].items()}
    for var in relax.analysis.defined_symbolic_vars(func):
        if var.name in bounds:
            analyzer.update(var, tvm.sym.ConstIntBound(0, bounds[var.name]))
    storage_bytes = {}
    views = {}
    for binding in bindings:
        value = binding.value
        op = getattr(value, "op", None)
        name = getattr(op, "name", None)
        if name == _ALLOC_STORAGE and _static(value.args[0]):
            storage_bytes[binding.var] = int(value.args[0].values[0])
        elif (name == _ALLOC_TENSOR and value.args[0] in storage_bytes and isinstance(value.args[1], tvm.tirx.IntImm)
              and isinstance(value.args[2], relax.ShapeExpr)):
            computed = list(value.args[2].values)
            bounded = _at_bound(computed, analyzer)
            itemsize = tvm.DataType(binding.var.ty.dtype).bits // 8
            if bounded and int(value.args[1]) + math.prod(bounded) * itemsize <= storage_bytes[value.args[0]]:
                views[binding.var] = (bounded, computed)
    # only kernels' buffers of the same pattern may receive them
    for binding in bindings:
        value = binding.value
        if binding.var in views:
            continue
        kernel = _kernel(mod, getattr(value, "op", None))
        for i, arg in enumerate(_args(value)):
            if isinstance(arg, relax.Var) and arg in views:
                if kernel is None or not _same_pattern(kernel.params[i], views[arg][1], analyzer):
                    views.pop(arg)
            elif kernel is None:
                relax.analysis.post_order_visit(arg, lambda e: views.pop(e, None) if isinstance(e, relax.Var) else None)
    relax.analysis.post_order_visit(func.body.body, lambda e: views.pop(e, None) if isinstance(e, relax.Var) else None)
    return views


def _at_bound(shape: list, analyzer) -> list | None:
    """``shape`` with its one symbolic dimension at its upper bound, when every dimension before it
    is 1 and the bound is known; else None."""
    symbolic = [i for i, dim in enumerate(shape) if not isinstance(dim, tvm.tirx.IntImm)]
    if len(symbolic) != 1 or any(int(dim) != 1 for dim in shape[:symbolic[0]]):
        return None
    bound = analyzer.const_int_bound(shape[symbolic[0]]).max_value
    if bound >= tvm.sym.ConstIntBound.POS_INF:
        return None
    return [tvm.tirx.IntImm("int64", bound) if i == symbolic[0] else dim for i, dim in enumerate(shape)]


def _same_pattern(param, shape: list, analyzer) -> bool:
    """The kernel's parameter is a compact buffer of ``shape``'s constant dimensions, its symbolic
    one in the same place."""
    ty = getattr(param, "ty", None)
    if not isinstance(ty, BufferType) or len(ty.shape) != len(shape):
        return False
    for dim, want in zip(ty.shape, shape):
        if isinstance(want, tvm.tirx.IntImm) != isinstance(dim, tvm.tirx.IntImm):
            return False
        if isinstance(want, tvm.tirx.IntImm) and int(dim) != int(want):
            return False
    if ty.strides:
        compact = [math.prod(ty.shape[i + 1:]) for i in range(len(ty.shape))]
        if not all(analyzer.can_prove_equal(s, c) for s, c in zip(ty.strides, compact)):
            return False
    return not ty.elem_offset or (isinstance(ty.elem_offset, tvm.tirx.IntImm) and int(ty.elem_offset) == 0)


def _bounded_kernel(builder: relax.BlockBuilder, kernel: tvm.tirx.PrimFunc, name: str, bounded: dict):
    """(the GlobalVar of a copy of ``kernel``, added to the ``builder``'s module, whose parameters at
    ``bounded``'s indices are buffers of the bound's shape; (parameter index, dimension) of the
    computed shape that gives each scalar parameter it adds): each variable the old buffers' shapes
    alone defined becomes a scalar parameter, which a call gives from the view's computed shape."""
    params = list(kernel.params)
    replaced, added, scalars = {}, [], []
    for i, (shape, _) in bounded.items():
        old = params[i]
        params[i] = replaced[old] = tvm.tirx.decl_buffer(shape, old.ty.dtype, old.name,
                                                         data_alignment=old.ty.data_alignment, offset_factor=old.ty.offset_factor)
    defined = {p for p in params if not isinstance(p.ty, BufferType)}
    for p in params:
        if isinstance(p.ty, BufferType):
            defined.update(d for d in p.ty.shape if isinstance(d, tvm.tirx.Var))
    for i in bounded:
        for d, dim in enumerate(kernel.params[i].ty.shape):
            if isinstance(dim, tvm.tirx.Var) and dim not in defined:
                defined.add(dim)
                added.append(dim)
                scalars.append((i, d))
    body = tvm_ffi.structural_map(kernel.body, (tvm.ir.expr.Var, lambda v: replaced.get(v, v)))
    copy = tvm.tirx.PrimFunc([*params, *added], body, kernel.ret_type, kernel.attrs)
    return builder.add_func(copy, name + BOUNDED_SUFFIX), scalars


def _static(shape) -> bool:
    return isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tvm.tirx.IntImm) for v in shape.values)
