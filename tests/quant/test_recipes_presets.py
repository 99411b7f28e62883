"""Every preset the README names exists (``w{4,3,2}g{128,64,32}-[hadamard-]{rtn,gptq}``), and
``edgeq.list_presets()`` / ``edgeq quantize --list [--json]`` describe each one (issue #17)."""

from __future__ import annotations

import json

import pytest

import edgeq
from edgeq.cli import main


GRID = [f"w{b}g{g}-{h}{m}" for b in (4, 3, 2) for g in (128, 64, 32) for h in ("", "hadamard-") for m in ("rtn", "gptq")]


def test_readme_grid_of_presets_exists():
    missing = [name for name in GRID if name not in edgeq.PRESETS]
    assert not missing, missing
    recipe = edgeq.PRESETS["w3g32-hadamard-gptq"]
    assert (recipe.method, recipe.bits, recipe.group_size, recipe.hadamard) == ("gptq", 3, 32, True)


def test_list_presets_describes_each_preset():
    rows = {row["name"]: row for row in edgeq.list_presets()}
    assert set(rows) == set(edgeq.PRESETS)
    assert rows["w4g32-rtn"] == {"name": "w4g32-rtn", "method": "rtn", "bits": 4, "group_size": 32,
                                 "needs_calibration": False}
    assert rows["w2g128-gptq"]["needs_calibration"] is True
    assert rows["w8-rtn"]["group_size"] is None  # per output channel
    assert rows["w8a8"]["needs_calibration"] is True and rows["w8a8"]["bits"] == 8


def test_quantize_list_prints_a_table_and_json(capsys):
    assert main(["quantize", "--list"]) == 0
    table = capsys.readouterr().out
    assert "w2g128-hadamard-gptq" in table and "calibration" in table
    assert main(["quantize", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} == set(edgeq.PRESETS)


def test_quantize_without_a_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "-o", "q.safetensors"])
    assert exc.value.code == 2 and "a model and a preset" in capsys.readouterr().err
