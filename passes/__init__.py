"""Graph passes over ONNX (``edgeq.passes.run_passes``), on the pass manager ``edgeq.pass_manager``.

Each pass module registers itself on import. The ``default`` pipeline lists the passes that keep
the numbers (within a float tolerance); ``integerize`` changes them by design and runs on request.
Importing this package also registers the ``export`` pipeline (``edgeq.export_passes``), so that
``edgeq optimize`` can name every pass below the TVM back end.
"""

from edgeq import export_passes  # noqa: F401  (register the export pipeline)
from edgeq.pass_manager import (
    Pass, PassReport, get_pass, get_pipeline, pass_names, pipeline_names, register_pass, register_pipeline, run_passes,
)
from edgeq.passes import dead_nodes, constant_folding, fold_batchnorm, fold_scales, fold_rotations, integerize  # noqa: F401,E402  (register)

DEFAULT_PIPELINE = register_pipeline("default", ("constant_folding", "fold_batchnorm", "fold_scales", "fold_rotations", "dead_nodes"))

__all__ = ["DEFAULT_PIPELINE", "Pass", "PassReport", "get_pass", "get_pipeline", "pass_names", "pipeline_names",
           "register_pass", "register_pipeline", "run_passes"]
