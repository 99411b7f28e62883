"""Graph passes over ONNX and the pass manager (``edgeq.passes.run_passes``).

Each pass module registers itself on import; ``DEFAULT_PIPELINE`` lists the passes that keep
the numbers (within a float tolerance); ``integerize`` changes them by design and runs on request.
"""

from edgeq.passes.manager import DEFAULT_PIPELINE, Pass, PassReport, get_pass, pass_names, register_pass, run_passes
from edgeq.passes import dead_nodes, constant_folding, fold_batchnorm, fold_scales, fold_rotations, integerize  # noqa: F401,E402  (register)

__all__ = ["DEFAULT_PIPELINE", "Pass", "PassReport", "get_pass", "pass_names", "register_pass", "run_passes"]
