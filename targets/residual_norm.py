"""A residual add and the RMSNorm that reads its sum as one kernel: a Relax rewrite.

Each decoder layer adds its attention and its MLP output to the residual stream, and the next
RMSNorm (the layer's second, the next layer's first, the final one) reads that sum:

    h = a + b                                             # the residual stream, used again later
    y = weight * (h * (1 / sqrt(mean_of_squares(h) + eps)))

FuseOps never fuses an elementwise producer into a reduction, so the add was a kernel of its own
(at decode, 60 per SmolLM2 step: a VM call, an allocation and a free each, for 576 additions).
Here the chain becomes one ``call_te`` with two outputs, ``(h, y)``, written with the same TE
expressions as the legalized ops (topi's add, ``mean_of_squares_te``, add, sqrt, divide and the
two multiplies, in their order: both outputs are bit for bit the unfused kernels'), so the kernel
reads ``a`` and ``b`` once and gives ``h`` to its later users. The pattern of ``y`` is declared
once; since ``h`` has other users, the rewrite rebinds ``h`` and ``y`` to the kernel's outputs
where they were bound rather than replacing ``y`` alone. A norm of something other than an add
(the first layer's, of the embedding) is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx, topi
from tvm.relax.dpl import is_const, is_op, wildcard

from edgeq.targets.gqa_attention import known_shape
from edgeq.targets.mean_of_squares import KERNEL_NAME as MEAN_OF_SQUARES, mean_of_squares_te

KERNEL_NAME = "add_rms_norm"


def add_rms_norm_pattern():
    """(the pattern of ``y``, its named parts): ``y = multiply(weight, multiply(h, divide(1,
    sqrt(add(mean_of_squares(h), eps)))))`` with ``h = add(a, b)``."""
    from tvm.relax.dpl import GlobalVarPattern, TuplePattern

    p = {name: wildcard() for name in ("a", "b", "weight")}
    p["kernel"], p["one"], p["eps"] = GlobalVarPattern(), is_const(), is_const()
    p["sum"] = is_op("relax.add")(p["a"], p["b"])
    squares = is_op("relax.call_tir")(p["kernel"], TuplePattern([p["sum"]]))
    inverse = is_op("relax.divide")(p["one"], is_op("relax.sqrt")(is_op("relax.add")(squares, p["eps"])))
    return is_op("relax.multiply")(p["weight"], is_op("relax.multiply")(p["sum"], inverse)), p


def add_rms_norm_te(a: te.Tensor, b: te.Tensor, weight: te.Tensor, eps: float):
    """``[a + b, weight * ((a + b) / sqrt(mean((a + b)^2, -1) + eps))]``, the legalized ops' expressions."""
    total = topi.add(a, b)
    inverse = topi.divide(tirx.const(1.0, "float32"), topi.sqrt(topi.add(mean_of_squares_te(total, True),
                                                                         tirx.const(eps, "float32"))))
    return [total, topi.multiply(weight, topi.multiply(total, inverse))]


def fuse_add_rms_norm(mod: tvm.IRModule, functions) -> tvm.IRModule:
    """``mod`` with each residual add and the RMSNorm of its sum (see the module docstring) in the
    Relax ``functions`` (names) one ``add_rms_norm`` kernel; run after ``fuse_mean_of_squares``.
    The kernel's call is bound where the add was, the add's variable and the norm's become its two
    outputs (their users are unchanged), and the norm's other steps are left dead."""
    pattern, p = add_rms_norm_pattern()
    builder = relax.BlockBuilder(mod)
    for name in functions:
        gv = mod.get_global_var(name)
        func = builder.get()[gv]
        var2val = relax.analysis.get_var2val(func)
        at_sum, at_norm = {}, {}  # the add's variable -> (kernel call); the norm's -> the add's
        for block in func.body.blocks:
            for binding in block.bindings:
                matches = pattern.extract_matched_expr(binding.value, var2val)
                if matches is None or not _fits(matches, p):
                    continue
                total = _bound_var(matches[p["sum"]], var2val)
                if total is None or total in at_sum:
                    continue
                # the operands as the bindings name them (the matches look through variables to
                # their values, which would compute them again)
                a, b = var2val[total].args
                eps = float(matches[p["eps"]].value.numpy().reshape(()))
                weight = _as_written(matches[p["weight"]], binding.value.args, var2val)
                at_sum[total] = builder.call_te(add_rms_norm_te, a, b, weight, eps,
                                                primfunc_name_hint=KERNEL_NAME)
                at_norm[binding.var] = total
        if not at_sum:
            continue
        outputs: dict = {}
        blocks = []
        for block in func.body.blocks:
            bindings = []
            for binding in block.bindings:
                if binding.var in at_sum:
                    call = at_sum[binding.var]
                    var_type = relax.DataflowVar if isinstance(block, relax.DataflowBlock) else relax.Var
                    fused = var_type("residual_and_norm", call.ty_args[0])  # call_tir's output type
                    outputs[binding.var] = fused
                    bindings += [relax.VarBinding(fused, call), relax.VarBinding(binding.var, relax.TupleGetItem(fused, 0))]
                elif binding.var in at_norm:
                    bindings.append(relax.VarBinding(binding.var, relax.TupleGetItem(outputs[at_norm[binding.var]], 1)))
                else:
                    bindings.append(binding)
            blocks.append(type(block)(bindings))
        body = relax.SeqExpr(blocks, func.body.body)
        builder.update_func(gv, relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs))
    return relax.transform.DeadCodeElimination(list(functions))(builder.get())


def _as_written(matched, args, var2val):
    """The argument among ``args`` that the pattern matched as ``matched`` (itself or its variable)."""
    return next(x for x in args if x.same_as(matched) or (isinstance(x, relax.Var) and x in var2val and var2val[x].same_as(matched)))


def _bound_var(expr, var2val):
    """The variable bound to ``expr`` (the add's call), found by identity."""
    return next((var for var, value in var2val.items() if value.same_as(expr)), None) if not isinstance(expr, relax.Var) else expr


def _fits(matches, p) -> bool:
    """The squares' kernel is ``mean_of_squares``; two float32 operands of one shape with a static
    last dimension, a weight vector of that width (leading dimensions 1); scalar constants 1 and eps."""
    kernel = matches[p["kernel"]]
    if not kernel.name_hint.startswith(MEAN_OF_SQUARES):
        return False
    a, b, weight, eps, one = (matches[p[n]] for n in ("a", "b", "weight", "eps", "one"))
    shapes = [known_shape(x) for x in (a, b, weight)]
    if any(s is None for s in shapes) or any(getattr(x.ty, "dtype", None) != "float32" for x in (a, b, weight)):
        return False
    (a_shape, b_shape, w_shape), width = shapes, shapes[0][-1]
    if not isinstance(width, tvm.tirx.IntImm) or len(a_shape) != len(b_shape) or len(w_shape) > len(a_shape):
        return False
    if [str(d) for d in a_shape] != [str(d) for d in b_shape]:
        return False
    if not all(isinstance(d, tvm.tirx.IntImm) for d in w_shape) or [int(d) for d in w_shape][-1] != int(width):
        return False
    if any(int(d) != 1 for d in w_shape[:-1]):
        return False
    return all(c.value.numpy().size == 1 for c in (eps, one)) and float(one.value.numpy().reshape(())) == 1.0
