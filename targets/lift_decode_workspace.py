"""A decode step's workspace made once: a Relax module pass, run after the static memory plan.

After ``StaticPlanBlockMemory`` and ``LowerAllocTensor`` every intermediate of a decode step with a
static shape is ``R.memory.alloc_tensor(storage, constant offset, constant shape, dtype)`` on a
storage from ``R.memory.alloc_storage(constant size, ...)``, and the reshapes between kernels are
views of those tensors: the same storages and views on every call, each one a VM builtin call per
step (``vm.builtin.alloc_storage`` from the pooled allocator, ``alloc_tensor``, ``reshape``). The
pass moves those bindings into a new function ``<function>_workspace()`` that returns the tensors
the step reads as a tuple, and gives ``<function>`` them as trailing parameters instead. A caller
makes the workspace once and binds it (``VirtualMachine.save_function(function, name, *workspace)``
binds trailing arguments), so a step runs kernels and no allocation or reshape builtins for it.

Equal views (same storage, offset, shape and dtype; the same reshape of the same tensor) are one
parameter: the plan reuses a few storages across every layer, so the workspace does not grow with
the number of layers. The parameters come after the function's ``num_input`` (set to the old
parameters when absent: the VM checks no static shape past it), so they add no per-call check.

The result moves too when its view is made once: ``decode`` then writes into the workspace's last
item and returns it (``returned_workspace_item``), and a caller copies it out before the next call.
What stays in the step: a storage read by a view whose shape is symbolic (one ``bounded_views``
could not give its bound's shape), with its views. The workspace then holds tensors only: an RPC
session passes them by handle each call (a storage object cannot go back to a device as an
argument). The workspace is written by every call.
"""

from __future__ import annotations

import tvm
from tvm import relax

WORKSPACE_SUFFIX = "_workspace"


def workspace_name(function: str) -> str:
    return function + WORKSPACE_SUFFIX


def lift_decode_workspace(mod: tvm.IRModule, function: str) -> tvm.IRModule:
    """``mod`` with the static workspace of the Relax ``function`` (a name) made by a new function
    ``workspace_name(function)`` and passed to ``function`` as trailing parameters; unchanged when
    ``mod`` has no such function, it allocates nothing static, or it returns more than one tensor
    (results a caller passes to the next call, as the appending cache form does, must not be
    written by it)."""
    if function not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    func = mod[function]
    if not (isinstance(func, relax.Function) and isinstance(func.ret_ty, relax.TensorType)):
        return mod
    moved, canonical, kept_blocks = _split(func)
    if not moved:
        return mod
    read_by_step = set()
    for block in kept_blocks:
        for binding in block.bindings:
            relax.analysis.post_order_visit(binding.value, lambda e: read_by_step.add(e) if isinstance(e, relax.Var) else None)
    read_by_step.add(func.body.body)
    # every moved variable the step still reads, once each (its canonical view)
    read_views = {canonical[v] for v in read_by_step if v in canonical}
    result = canonical.get(func.body.body)  # the result, when it is a view made once: the workspace's last item
    handed = [binding.var for binding in moved if binding.var in read_views and not binding.var.same_as(result)]
    handed += [result] if result is not None else []
    aliases = {v: canonical[v] for v in read_by_step if v in canonical and not canonical[v].same_as(v)}
    step = relax.Function([*func.params, *handed, *aliases], relax.SeqExpr(kept_blocks, func.body.body), func.ret_ty,
                          func.is_pure, func.attrs)
    if aliases:
        step = step.bind_params(dict(aliases))
    if "num_input" not in (func.attrs or {}):  # the VM checks the arguments before it, the static ones past it not
        step = step.with_attr("num_input", len(func.params))
    ret_ty = relax.TupleType([v.ty for v in handed])
    make = relax.Function([], relax.SeqExpr([relax.BindingBlock(moved)], relax.Tuple(handed)), ret_ty, func.is_pure)
    for key, value in (func.attrs or {}).items():
        if key not in ("num_input", "tir_var_upper_bound", "global_symbol"):
            make = make.with_attr(key, value)
    out = mod.clone()
    out[function] = step
    out[workspace_name(function)] = relax.utils.copy_with_new_vars(make)
    return relax.transform.Normalize()(out)


def returned_workspace_item(mod: tvm.IRModule, function: str) -> int | None:
    """The index, in ``workspace_name(function)``'s tuple, of the tensor ``function`` returns (its
    result made once, written by each call: the workspace's last item), or None when it returns
    a tensor of its own or has no workspace."""
    names = [gv.name_hint for gv in mod.get_global_vars()]
    if workspace_name(function) not in names:
        return None
    items = len(mod[workspace_name(function)].ret_ty.fields)
    step = mod[function]
    trailing = list(step.params)[len(step.params) - items:]
    returned = [i for i, param in enumerate(trailing) if param.same_as(step.body.body)]
    return returned[0] if returned else None


@tvm.transform.module_pass(opt_level=0, name="LiftDecodeWorkspace")
class LiftDecodeWorkspace:
    """The pass form of ``lift_decode_workspace`` for the named functions."""

    def __init__(self, functions):
        self.functions = list(functions)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for name in self.functions:
            mod = lift_decode_workspace(mod, name)
        return mod


_ALLOC_STORAGE = "relax.memory.alloc_storage"
_ALLOC_TENSOR = "relax.memory.alloc_tensor"
_RESHAPE = "relax.reshape"


def _split(func: relax.Function):
    """(the workspace's bindings, each moved variable -> the one that makes its view, the function's
    other binding blocks). A binding moves when its op is an allocation or a reshape whose
    arguments are constants or variables already moved: a view made once."""
    pinned = _pinned(func)
    moved, canonical, made = [], {}, {}
    kept_blocks = []
    for block in func.body.blocks:
        kept = []
        for binding in block.bindings:
            call = binding.value if isinstance(binding, relax.VarBinding) else None
            key = _workspace_key(call, canonical) if isinstance(call, relax.Call) else None
            if key is not None and key[0] == _ALLOC_STORAGE and binding.var in pinned:
                key = None
            if key is None:
                kept.append(binding)
                continue
            if key in made:
                canonical[binding.var] = made[key]
                continue
            args = [canonical.get(a, a) if isinstance(a, relax.Var) else a for a in call.args]
            moved.append(relax.VarBinding(binding.var, relax.Call(call.op, args, call.attrs, call.ty_args)))
            made[key] = canonical[binding.var] = binding.var
        if kept:
            kept_blocks.append(relax.BindingBlock(kept))
    return moved, canonical, kept_blocks


def _pinned(func: relax.Function) -> set:
    """The storages that stay in the step: those read by anything but a view of constant offset
    and shape (a view whose shape the step computes, when ``bounded_views`` could not give it its
    bound's). The workspace then holds tensors only, which an RPC session passes by handle each
    call (a storage object cannot go back to the device as an argument)."""
    pinned = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            static_view = (isinstance(value, relax.Call) and getattr(value.op, "name", None) == _ALLOC_TENSOR
                           and all(map(_constant, value.args[1:])))
            for arg in (value.args[1:] if static_view else [value]):
                relax.analysis.post_order_visit(arg, lambda e: pinned.add(e) if isinstance(e, relax.Var) else None)
    return pinned


def _workspace_key(call: relax.Call, canonical: dict):
    """A key equal for equal views when ``call`` makes a static piece of workspace, else None:
    a storage of constant size (each its own key: the plan gave it to tensors whose lives do not
    meet), a view of constant offset and shape on a moved storage, a reshape of a moved tensor to
    a constant shape."""
    op = getattr(call.op, "name", None)
    if op not in (_ALLOC_STORAGE, _ALLOC_TENSOR, _RESHAPE) or not all(map(_constant, call.args[1:])):
        return None
    if op == _ALLOC_STORAGE:  # a fresh object: the id of ``call``'s wrapper could be a freed one's again
        return (op, object()) if _constant(call.args[0]) else None
    source = call.args[0]
    if source not in canonical:
        return None
    return (op, id(canonical[source]), *(str(a) for a in call.args[1:]))


def _constant(expr) -> bool:
    """A shape of constant dimensions, an integer, a string or a dtype."""
    if isinstance(expr, relax.ShapeExpr):
        return all(isinstance(v, tvm.tirx.IntImm) for v in expr.values)
    return isinstance(expr, (tvm.tirx.IntImm, tvm.ir.StringImm, tvm.ir.expr.GenericConst))
