"""Save/load of weight-only models and the ``edgeq quantize`` command: a loaded model gives
identical outputs; bad files are named."""

from __future__ import annotations

import json

import pytest
import torch

import edgeq
from edgeq.cli import main
from edgeq.errors import ModelFileError, QuantizationError
from edgeq.quant.serialize import load_quantized, read_metadata, save_quantized
from edgeq.quant.weight_only import WeightOnlyConv2d, WeightOnlyLinear


def test_digits_cnn_round_trip_is_bit_identical(tmp_path, digits, digits_model):
    recipe = '{"method": "gptq", "bits": 4, "group_size": 16, "skip": ["stem.*"]}'
    qmodel = edgeq.quantize(digits_model, recipe, calib=digits.x_train[:256])
    assert isinstance(qmodel.block_a[0], WeightOnlyConv2d) and isinstance(qmodel.head, WeightOnlyLinear)
    path = save_quantized(qmodel, tmp_path / "d.safetensors", source="digits-cnn")
    loaded = load_quantized(path)
    x = digits.x_test[:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert loaded.edgeq_recipe == qmodel.edgeq_recipe
    # 4-bit GPTQ keeps the digits accuracy within 3 points of float
    with torch.no_grad():
        acc = lambda m: (m(digits.x_test).argmax(1) == digits.y_test).float().mean().item()  # noqa: E731
        assert acc(loaded) >= acc(digits_model) - 0.03
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]  # nothing half-written left


def test_cli_quantize_json(tmp_path, capsys):
    out = tmp_path / "d8.safetensors"
    assert main(["quantize", "digits-cnn", "w8-rtn", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"]["method"] == "rtn" and result["recipe"]["bits"] == 8
    assert 8.0 < result["bits_per_weight"] < 9.0  # 8 bits + one float16 scale and zero per row
    assert json.loads(read_metadata(out)["recipe"])["bits"] == 8


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["quantize", "digits-cnn", "w4g128-rtn", "-o", str(tmp_path / "x.safetensors")]) == QuantizationError.exit_code
    err = capsys.readouterr().err.strip()
    assert err == "edgeq quantize: error: stem.0: group size 128 does not divide its 9 input features"
    assert not list(tmp_path.iterdir())


def test_loading_a_file_that_is_not_a_quantized_model(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="bad.safetensors: not a safetensors file"):
        load_quantized(bad)
    with pytest.raises(ModelFileError, match="not found"):
        load_quantized(tmp_path / "missing.safetensors")


LOPRO_GPTQ = json.dumps({"method": "lopro", "bits": 3, "group_size": 16, "rank": 2, "block_size": 16,
                         "salient_blocks": 0, "quantizer": "gptq", "clip_steps": 0, "skip": ["stem.*", "block_*", "down.*"]})


def test_cli_quantize_passes_calibration_by_the_recipe_and_saves_lopro(tmp_path, capsys, digits, digits_model):
    """LoPRo's GPTQ flavour needs calibration: the CLI passes it because the recipe says so (it used
    to pass it to method "gptq" only), and the saved LoPRo layer loads back bit for bit."""
    out = tmp_path / "lopro.safetensors"
    assert main(["quantize", "digits-cnn", LOPRO_GPTQ, "-o", str(out), "--calib", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["method"] == "lopro"
    loaded = load_quantized(out)
    expected = edgeq.quantize(digits_model, LOPRO_GPTQ, calib=digits.x_train[:64])
    assert type(loaded.head).__name__ == "LoProLinear"
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), expected(digits.x_test))


def test_lrqmm_layers_save_and_load(tmp_path, digits, digits_model):
    qmodel = edgeq.quantize(digits_model, '{"method": "lrqmm", "bits": 4, "group_size": 32, "rank": 4, '
                                          '"factor_dtype": "int8", "skip": ["stem.*", "block_*", "down.*"]}')
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "lrqmm.safetensors", source="digits-cnn"))
    assert type(loaded.head).__name__ == "LowRankCorrectedLinear"
    with torch.no_grad():
        assert torch.equal(loaded(digits.x_test), qmodel(digits.x_test))
