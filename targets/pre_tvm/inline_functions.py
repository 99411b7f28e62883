"""inline_functions: every local function whose op the TVM importer has no converter for is
replaced by its body (``onnx.inliner``); ops with a converter (``edgeq.LowBitLinear``, ...) stay
whole so that their lowering sees them.
"""

from __future__ import annotations

import onnx
import onnx.inliner

from edgeq.pass_manager import Pass, register_pass


def inline_functions(model: onnx.ModelProto, keep: set[str] | None = None) -> onnx.ModelProto:
    """``model`` with the functions not named in ``keep`` (default: the importer's supported
    ops, which loads TVM) inlined."""
    if keep is None:
        from edgeq.targets.importer import supported_ops

        keep = supported_ops()
    inline = {(f.domain, f.name) for f in model.functions if f.name not in keep}
    if inline:
        model = onnx.inliner.inline_selected_functions(model, list(inline), exclude=False)
    return model


register_pass(Pass(name="inline_functions", run=inline_functions, doc=__doc__.splitlines()[0]))
