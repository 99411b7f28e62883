"""The pass manager (``edgeq.pass_manager``): the default pipeline keeps a model's outputs (verify
mode on), a pass that changes the outputs beyond its tolerance is stopped and named, an
integer-only graph is held to bit-exactness, ``requires`` is enforced, the ``export`` and
``pre_tvm`` pipelines run verified by name, and ``edgeq optimize`` runs them from the command line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from scipy.linalg import hadamard

from edgeq.cli import main
from edgeq.errors import ModelFileError, PassError
from edgeq import pass_manager as manager
from edgeq.passes import DEFAULT_PIPELINE, run_passes
from edgeq.passes.integerize import integerize
from edgeq.pass_manager import Pass
from _passes_testing import count, lowbit_linear, model_from_text, op_types, qdq_linear, run

RNG = np.random.default_rng(4)

MODEL = """
g (float[N, 3, 6, 6] x) => (float[N, 5] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    n = BatchNormalization (c, gamma, beta, mean, var)
    r = Relu (n)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    two = Constant <value = float {2.0}> ()
    g2 = Mul (gamma2, two)
    s = Mul (f, g2)
    rot = MatMul (s, h)
    y = MatMul (rot, w2)
}
"""


def _model():
    return model_from_text(
        MODEL, w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), b=np.zeros(4, np.float32),
        gamma=RNG.uniform(0.5, 2, 4).astype(np.float32), beta=RNG.standard_normal(4).astype(np.float32),
        mean=RNG.standard_normal(4).astype(np.float32), var=RNG.uniform(0.5, 2, 4).astype(np.float32),
        gamma2=RNG.uniform(0.5, 2, 4).astype(np.float32), h=(hadamard(4) / 2).astype(np.float32),
        w2=RNG.standard_normal((4, 5)).astype(np.float32),
    )


def test_default_pipeline_verified():
    model = _model()
    out, reports = run_passes(model, verify=True)
    assert [r.name for r in reports] == list(DEFAULT_PIPELINE)
    assert op_types(out) == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "MatMul"]
    assert all(r.max_rel_change is not None and r.max_rel_change <= 1e-4 for r in reports)
    feeds = manager.seeded_inputs(model, 7)
    a, b = run(model, feeds)[0], run(out, feeds)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def _perturb_first_matmul_weight(model, factor):
    node = next(n for n in model.graph.node if n.op_type in ("MatMul", "Conv"))
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    value = onnx.numpy_helper.to_array(init) * factor
    init.CopyFrom(onnx.numpy_helper.from_array(value.astype(value.dtype), init.name))
    return model


def test_verify_names_the_pass_that_changes_outputs(monkeypatch):
    bad = Pass(name="scale_weights_wrongly", run=lambda m: _perturb_first_matmul_weight(m, 1.01), doc="broken on purpose")
    monkeypatch.setitem(manager._PASSES, bad.name, bad)
    with pytest.raises(PassError, match=r"pass 'scale_weights_wrongly' changed the model's outputs by"):
        run_passes(_model(), ["fold_batchnorm", "scale_weights_wrongly", "dead_nodes"], verify=True)
    run_passes(_model(), ["fold_batchnorm", "scale_weights_wrongly"], verify=False)  # unverified: no check


def test_integer_graph_is_held_to_bit_exactness(monkeypatch):
    int_model = integerize(qdq_linear(48, 6, RNG.integers(-127, 128, (6, 48)).astype(np.int8)))

    def nudge_multiplier(m):
        node = next(n for n in m.graph.node if n.op_type == "DyadicRequantize")
        init = next(t for t in m.graph.initializer if t.name == node.input[1])
        value = onnx.numpy_helper.to_array(init).astype(np.int64) + (1 << 22)
        init.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.int32), init.name))
        return m

    bad = Pass(name="nudge_multiplier", run=nudge_multiplier, doc="a 0.2% change", tolerance=0.05)
    monkeypatch.setitem(manager._PASSES, bad.name, bad)
    with pytest.raises(PassError, match=r"pass 'nudge_multiplier' changed the model's outputs by .* \(tolerance 0\)"):
        run_passes(int_model, ["dead_nodes", "nudge_multiplier"], verify=True)


def test_requires_is_enforced():
    with pytest.raises(PassError, match=r"pass 'integerize' requires 'qdq'"):
        run_passes(_model(), ["integerize"])


def test_unknown_pass_is_named():
    with pytest.raises(PassError, match=r"unknown pass 'fold_everything'"):
        run_passes(_model(), ["fold_everything"])


def test_cli_optimize_integerizes_and_verifies(tmp_path, capsys):
    src, dst = tmp_path / "qdq.onnx", tmp_path / "int.onnx"
    onnx.save_model(qdq_linear(48, 6, RNG.integers(-127, 128, (6, 48)).astype(np.int8)), str(src))
    assert main(["optimize", str(src), str(dst), "--passes", "integerize,dead_nodes", "--verify"]) == 0
    assert "integerize" in capsys.readouterr().out
    assert "MatMulInteger" in op_types(onnx.load(str(dst)))
    sig = tmp_path / "sig.onnx"
    onnx.save_model(qdq_linear(8, 8, np.ones((8, 8), np.int8), middle="Sigmoid"), str(sig))
    assert main(["optimize", str(sig), str(dst), "--passes", "integerize"]) == PassError.exit_code
    assert "node 'gate' (Sigmoid) has no integer form" in capsys.readouterr().err
    assert main(["optimize", str(sig), str(dst), "--passes", "integerize", "--keep-float", "gate", "--verify"]) == 0


def test_cli_verifies_on_given_inputs(tmp_path, capsys):
    src, dst, feeds = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "in.npz"
    onnx.save_model(_model(), str(src))
    np.savez(feeds, x=RNG.standard_normal((3, 3, 6, 6)).astype(np.float32))
    assert main(["optimize", str(src), str(dst), "--inputs", str(feeds), "--json"]) == 0
    assert '"max_rel_change"' in capsys.readouterr().out
    assert main(["optimize", str(src), str(dst), "--inputs", str(tmp_path / "missing.npz")]) == ModelFileError.exit_code
    assert "missing.npz" in capsys.readouterr().err


def test_export_pipeline_is_verified():
    model, _ = lowbit_linear(bits=4)
    entry = model.graph.node[0].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.stack_trace", "File model.py"
    out, reports = run_passes(model, pipeline="export", verify=True)
    assert [r.name for r in reports] == list(manager.get_pipeline("export"))
    assert op_types(out) == ["DequantizeLinear", "MatMul"] and not out.graph.node[1].metadata_props
    assert all(r.max_rel_change <= 1e-5 for r in reports)


PRE_TVM = """
g (float[N, 16] x) => (float[N, 6] q, float[N, 6] k, float[N, 12] logits) {
    wq = DequantizeLinear <axis = 0, block_size = 8> (q4, s, z)
    wk = DequantizeLinear <axis = 0, block_size = 8> (k4, s, z)
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    table_t = Transpose <perm = [1, 0]> (table)
    logits = MatMul (x, table_t)
}
"""


def test_pre_tvm_pipeline_is_verified(tmp_path, capsys):
    """The importer's preparations by name, verified on onnxruntime (their ops through references)."""
    import ml_dtypes

    import edgeq.targets  # noqa: F401  (registers pre_tvm)

    model = model_from_text(
        PRE_TVM, q4=RNG.integers(-8, 8, (16, 6)).astype(ml_dtypes.int4), k4=RNG.integers(-8, 8, (16, 6)).astype(ml_dtypes.int4),
        s=RNG.uniform(0.01, 0.1, (2, 6)).astype(np.float32), z=np.zeros((2, 6), ml_dtypes.int4),
        table=RNG.standard_normal((12, 16)).astype(np.float32))
    out, reports = run_passes(model, pipeline="pre_tvm", verify=True)
    assert [r.name for r in reports] == list(manager.get_pipeline("pre_tvm"))
    assert (count(out, "PackedLinear"), count(out, "Split"), count(out, "LinearTransposedWeight")) == (1, 1, 1)
    assert all(r.max_rel_change <= 1e-5 for r in reports)
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save_model(model, str(src))
    assert main(["optimize", str(src), str(dst), "--passes", "pre_tvm", "--verify"]) == 0
    assert "tied_matmul" in capsys.readouterr().out
    assert main(["optimize", "--passes", "list"]) == 0
    assert "pre_tvm" in capsys.readouterr().out


def test_unknown_pipeline_is_named():
    with pytest.raises(PassError, match=r"unknown pipeline 'fold_all'; known pipelines: default, export"):
        run_passes(_model(), pipeline="fold_all")
