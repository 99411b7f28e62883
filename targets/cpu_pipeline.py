"""edgeq's CPU pipeline, shaped like TVM's ``relax/backend/cpu_generic/pipeline.py``: Relax's
default CPU pipeline with a vectorizable exp legalized first, then edgeq's kernels as schedule
rules (``edgeq.targets.schedules``) applied by ``ApplyDefaultSchedule``: the packed low-bit
linears first, the default rules for everything still unscheduled after a tuning database
(``edgeq tune``) had its say (``edgeq.targets.compile.default_pipeline`` runs the steps in that
order). Targets that are not LLVM CPUs get none of these."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir.dlight import ApplyDefaultSchedule

from edgeq.targets import fast_exp
from edgeq.targets.generation import FUNCTIONS
from edgeq.targets.gqa_attention import GqaSchedule
from edgeq.targets.bounded_views import BoundedViews
from edgeq.targets.lift_decode_workspace import LiftDecodeWorkspace
from edgeq.targets.schedules.conv import Conv
from edgeq.targets.schedules._loops import VAR_UPPER_BOUND
from edgeq.targets.schedules.elementwise import Elementwise
from edgeq.targets.schedules.matmul import Matmul
from edgeq.targets.schedules.packed_linear import PackedLinear
from edgeq.targets.schedules.reduction import Reduction
from edgeq.targets.schedules.rows import Rows


def is_cpu(target: tvm.target.Target) -> bool:
    return "cpu" in target.keys and target.kind.name == "llvm"


def legalize_passes(target: tvm.target.Target) -> list:
    """The vectorizable exp for softmax and sigmoid, legalized before the default pipeline's own
    LegalizeOps (which then has nothing left to do for them); then symbolic aranges kept unfused."""
    custom = fast_exp.legalize_map(target)
    return [relax.transform.LegalizeOps(custom), keep_symbolic_arange_unfused] if custom else []


@tvm.transform.module_pass(opt_level=0, name="KeepSymbolicArangeUnfused")
def keep_symbolic_arange_unfused(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """An arange whose length is symbolic (positions over a KV cache's ``past + seq``) becomes an
    opaque kernel that FuseOps leaves alone. Fused with its consumers, as Gemma2's sliding-window
    mask builds it, TVM 0.27's FuseTIR fails (RenewDefs: ``VarRemapGet(source) == nullptr``); the
    kernel writes one small index vector per call."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith("arange") and _symbolic(func):
            mod[gv] = func.with_attr("op_pattern", 8)  # kOpaque
    return mod


def relax_pipeline(target: tvm.target.Target, generation: bool = False) -> tvm.transform.Pass:
    """Relax's default pipeline for ``target``; for a generation module (``generation``) on a CPU,
    one that leaves the VM fewer builtin calls per step: no tuple of a multi-output kernel's outputs
    that nothing reads (``RemoveUnusedTuples``), and no ``KillAfterLastUse``. Every intermediate of
    a generation function is planned statically (its symbolic sizes carry ``tir_var_upper_bound``),
    so a kill only ends an object's life before the call returns: the storage the plan shares
    between tensors is the same, and the call frees every object at its end. Then the decode
    function's views over ``past + 1`` positions get the bound's static shape (``bounded_views``),
    and its static workspace, its result included, is made by a function of its own, once, and
    passed to it (``lift_decode_workspace``): a decode step allocates nothing and makes no view."""
    if not (generation and is_cpu(target)):
        return relax.get_default_pipeline(target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    # in KillAfterLastUse's place, what it does first: bindings canonicalized (no copy of a variable,
    # no item of a known tuple); then the tuples nothing reads any more are removed
    finalize = []
    for p in cpu_generic.finalize_passes(target):
        finalize += ([relax.transform.CanonicalizeBindings(), remove_unused_tuples, BoundedViews([FUNCTIONS["decode"]]),
                      LiftDecodeWorkspace([FUNCTIONS["decode"]])]
                     if p.info.name == "KillAfterLastUse" else [p])
    passes = (cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
              + cpu_generic.dataflow_lower_passes(target) + finalize)

    @tvm.transform.module_pass(opt_level=0, name="EdgeqGenerationPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


@tvm.transform.module_pass(opt_level=0, name="RemoveUnusedTuples")
def remove_unused_tuples(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Bindings of a tuple that no expression reads removed from the Relax functions (``CallTIRRewrite``
    binds the outputs of a multi-output kernel as a tuple, which the VM builds each call even when
    every reader takes the outputs directly)."""
    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _without_unused_tuples(func)
    return out


def _without_unused_tuples(func: relax.Function) -> relax.Function:
    read: set = set()

    def visit(expr):
        if isinstance(expr, relax.Var):
            read.add(expr)

    relax.analysis.post_order_visit(func.body, visit)  # the variables read (a binding's own variable is not visited)
    body = func.body
    blocks = []
    for block in body.blocks:
        kept = [b for b in block.bindings if not (isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Tuple)
                                                  and b.var not in read)]
        blocks.append(type(block)(kept) if len(kept) != len(block.bindings) else block)
    if all(a.same_as(b) for a, b in zip(blocks, body.blocks)):
        return func
    return relax.Function(func.params, relax.SeqExpr(blocks, body.body), func.ret_ty, func.is_pure, func.attrs)


def kernel_rules(act_bits: int = 32) -> list:
    """edgeq's own kernels, which no tuning database replaces."""
    return [PackedLinear(act_bits), GqaSchedule()]


def default_rules() -> list:
    """The default schedules, tried in order on each unscheduled PrimFunc."""
    return [Matmul(), Conv(), Rows(), Reduction(), Elementwise()]


def schedule_kernels(mod: tvm.IRModule, target: tvm.target.Target, act_bits: int = 32) -> tvm.IRModule:
    """The packed low-bit linears of a lowered module, scheduled (CPU targets only)."""
    if "cpu" not in target.keys:
        return mod
    with target:
        return ApplyDefaultSchedule(*kernel_rules(act_bits))(mod)


def schedule_defaults(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Every PrimFunc still unscheduled gets the first default rule that fits; one no rule takes
    compiles as before (one scalar thread). The rules size symbolic extents by the Relax
    functions' ``tir_var_upper_bound`` (``with_var_upper_bounds``)."""
    if not is_cpu(target):
        return mod
    with target:
        return ApplyDefaultSchedule(*default_rules())(with_var_upper_bounds(mod))


def with_var_upper_bounds(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with each PrimFunc that has symbolic dimensions carrying the largest value the
    Relax functions' ``tir_var_upper_bound`` give each name (a generation artifact: ``past`` up to
    the context, ``seq`` up to the prefill chunk), so a rule can tell a kernel that stays small
    (a decode step's mask over ``past + 1`` positions) from one that does not."""
    bounds: dict[str, int] = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function) and func.attrs is not None and "tir_var_upper_bound" in func.attrs:
            for name, bound in func.attrs["tir_var_upper_bound"].items():
                bounds[str(name)] = max(bounds.get(str(name), 0), int(bound))
    if not bounds:
        return mod
    out = mod.clone()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and _symbolic(func):
            out[gv] = func.with_attr(VAR_UPPER_BOUND, bounds)
    return out



def _symbolic(func: tvm.tirx.PrimFunc) -> bool:
    """A shape parameter (a scalar beside the buffers) or a buffer dimension that is not constant."""
    for param in func.params:
        shape = getattr(param, "shape", None)
        if shape is None or any(not isinstance(dim, tvm.tirx.IntImm) for dim in shape):
            return True
    return False
