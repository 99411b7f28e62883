"""``edgeq export`` on a built-in model (float: no weight-only preset fits its 9-weight stem), then ``edgeq inspect --json`` on the file it wrote."""

from __future__ import annotations

import json

import numpy as np

from edgeq.cli import main
from edgeq.errors import ExportError
from edgeq.runtime.ort import ort_session


def test_export_then_inspect(tmp_path, capsys, digits, digits_model):
    qmodel = digits_model
    out = tmp_path / "digits.onnx"
    assert main(["export", "digits", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(out) and result["bytes"] == out.stat().st_size
    session = ort_session(out)
    got = session.run(None, {"input": digits.x_test[:32].numpy()})[0]
    ref = qmodel(digits.x_test[:32]).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["op_histogram"]["Conv"] == 4 and info["edgeq_ops"] == {} and info["quantized_weights"] == 0
    assert info["inputs"][0]["shape"] == ["batch", 1, 8, 8]


def test_export_refuses_escaping_external_data(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "digits", "-o", str(out), "--external-data", "../x.bin"]) == ExportError.exit_code
    assert "leaves the output folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_a_saved_quantized_model(tmp_path, capsys, digits, digits_model):
    import edgeq
    from edgeq.quant.serialize import load_quantized, save_quantized
    from edgeq.quant.weight_only_recipes import RTNRecipe

    qmodel = edgeq.quantize(digits_model, RTNRecipe(bits=4, group_size=None, skip=("stem.*",)))
    saved = save_quantized(qmodel, tmp_path / "digits-w4.safetensors", "digits-cnn")
    out = tmp_path / "digits-w4.onnx"
    assert main(["export", str(saved), "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_weight"] < 8
    got = ort_session(out).run(None, {"input": digits.x_test[:32].numpy()})[0]
    ref = load_quantized(saved)(digits.x_test[:32]).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
