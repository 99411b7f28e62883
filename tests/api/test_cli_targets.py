"""``edgeq targets`` lists every registered target with its TVM target (JSON that TVM parses to the
target edgeq compiles for), its compiler and whether that compiler is on PATH."""

from __future__ import annotations

import json
import shutil

from edgeq.cli import main
from edgeq.targets.registry import get_target, target_names


def test_targets_lists_every_target_as_tvm_parses_it(capsys):
    import tvm

    assert main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(target_names())
    for name, row in rows.items():
        spec = get_target(name)
        parsed = tvm.target.Target(json.loads(row["tvm_target"]))
        assert parsed.kind.name == spec.tvm().kind.name
        assert str(parsed.attrs.get("mtriple", "")) == spec.tvm_target.get("mtriple", "")
    assert rows["arm64"]["compiler"] == "aarch64-linux-gnu-g++"
    assert rows["arm64"]["installed"] == (shutil.which("aarch64-linux-gnu-g++") is not None)
    assert rows["hexagon-v68"]["installed"] is None  # an object archive needs no linker


def test_targets_table(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "TVM target" in out and all(name in out for name in target_names())
