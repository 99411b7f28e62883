"""Helpers for tests that build a Relax module inline and run it through edgeq's CPU pipeline."""

from __future__ import annotations

import tvm
from tvm import relax

from edgeq.targets.compile import default_pipeline
from edgeq.targets.registry import get_target


def cpu_vm(mod: tvm.IRModule) -> tuple[tvm.IRModule, relax.VirtualMachine]:
    """``mod`` lowered by edgeq's ``cpu`` pipeline (scheduled kernels), and a VM on this host running it."""
    spec = get_target("cpu")
    lowered, _ = default_pipeline(mod, spec)
    return lowered, relax.VirtualMachine(tvm.compile(lowered, target=spec.tvm(), relax_pipeline=None), tvm.cpu())
