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
from edgeq.targets.gqa_attention import GqaSchedule
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
