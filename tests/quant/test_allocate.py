"""The per-layer bit allocator (issue #20): the integer program's plan is the optimum and meets
the budget; the GPTQ error estimate ranks grids as GPTQ itself does; the measured sensitivity is
each option's output error on the held-out calibration windows; a tiny Llama quantized within a
budget (GPTQ grids, and LoPRo with GPTQ grids) keeps its plan through save/load, exports,
compiles for cpu (matching PyTorch within the float floor rule) and cross-compiles for arm64."""

from __future__ import annotations

import itertools

import pytest
import torch

import edgeq
from edgeq.errors import QuantizationError
from edgeq.quant.allocate import (AllocatedRecipe, LayerOption, gptq_error_estimate, layer_grids, solve_plan,
                                  stored_bits_per_weight)
from edgeq.quant.gptq import HessianAccumulator, gptq_quantize_weight
from edgeq.quant.weight_only import WeightOnlyLinear
from _tiny_models import tiny_llama
from _devices import assert_aarch64_library, require_arm64_cross


def test_plan_is_the_brute_force_optimum_within_budget():
    g = torch.Generator().manual_seed(0)
    options = {f"l{i}": [LayerOption(b, 64, b + 0.375, float(torch.rand(1, generator=g)) * 10 ** (4 - b))
                         for b in (2, 3, 4)] for i in range(5)}
    weights = {f"l{i}": int(w) for i, w in enumerate((100, 300, 50, 200, 120))}
    total = sum(weights.values())
    budget = 3.0
    best = min((combo for combo in itertools.product(*options.values())
                if sum(o.bits_per_weight * weights[n] for n, o in zip(options, combo)) / total <= budget),
               key=lambda combo: sum(o.sensitivity for o in combo))
    plan = solve_plan(options, weights, budget)
    assert [plan[n] for n in options] == list(best)
    with pytest.raises(QuantizationError, match=r"below the cheapest plan \(2\.375"):
        solve_plan(options, weights, 2.0)


def test_grids_and_stored_bits():
    assert layer_grids(576, ((3, 128), (2, 64), (3, 64))) == [(3, 64), (2, 64)]
    assert layer_grids(9, ((4, 32), (8, 32))) == [(8, 9)]  # a 3x3 stem: per row, where it packs
    assert stored_bits_per_weight(576, 1536, 3, 128) == pytest.approx(3 + 24 / 128)


def test_error_estimate_tracks_gptq_across_grids():
    """Σ δ²/U_jj² is GPTQ's error up to one factor common to every grid (what the plan needs)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g)
    x = (torch.randn(2048, 32, generator=g) @ torch.randn(32, 256, generator=g)
         + 0.3 * torch.randn(2048, 256, generator=g)) * torch.logspace(0, 1.5, 256)
    acc = HessianAccumulator(torch.nn.Linear(256, 64))
    acc.add(x)
    ratios = []
    for bits, group in ((2, 32), (2, 64), (3, 64), (3, 128), (4, 128)):
        d = gptq_quantize_weight(w, acc.h, bits, group, act_order=True, block_size=64).dequantize() - w
        ratios.append(gptq_error_estimate(w, acc.h, bits, group).sum().item() / ((d @ acc.h) * d).sum().item())
    assert max(ratios) / min(ratios) < 1.4, ratios  # measured 3.6-4.2


def _tiny_llama():
    return tiny_llama(architectures=["LlamaForCausalLM"])


@pytest.fixture(scope="module")
def allocated_llama():
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    return edgeq.quantize(_tiny_llama(), AllocatedRecipe(skip=("lm_head",), budget=3.0, hadamard=True), calib=[calib])


def test_budget_met_and_plan_in_the_recipe(allocated_llama):
    layers = {n: m for n, m in allocated_llama.named_modules() if isinstance(m, WeightOnlyLinear)}
    stored = 8 * sum(m.weight_bytes() for m in layers.values()) / sum(m.in_features * m.out_features for m in layers.values())
    assert stored <= 3.0 and len(layers) == 14
    plan = {name: (method, bits, group) for name, method, bits, group in allocated_llama.edgeq_recipe.plan}
    assert plan == {n: ("gptq", m.bits, m.group_size) for n, m in layers.items()}
    assert len(set(plan.values())) > 1  # a mixed plan, not one grid everywhere
    again = edgeq.recipes.resolve_recipe(allocated_llama.edgeq_recipe.to_json())
    assert again == allocated_llama.edgeq_recipe


@pytest.fixture(scope="module")
def lopro_allocated_llama():
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    recipe = AllocatedRecipe(skip=("lm_head",), budget=3.0, grids=((2, 32), (4, 32)), hadamard=True,
                             lopro_grids=((2, 32), (3, 64), (4, 64)), lopro_block_size=32, sensitivity="measured")
    return edgeq.quantize(_tiny_llama(), recipe, calib=[calib])


def test_measured_sensitivity_is_the_held_out_output_error():
    """Without a language-model loss, an option's sensitivity is its output error on the odd
    windows, (2/n)·|X_odd (W - Ŵ)ᵀ|², with Ŵ solved on the even windows' Hessian."""
    from edgeq.quant.allocate import measure_sensitivity, quantize_option

    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16)).eval()
    fit, judge_x = (torch.randn(128, 64, generator=g) * torch.logspace(0, 1, 64) for _ in range(2))
    recipe = AllocatedRecipe(grids=((2, 32),), lopro_grids=((3, 64),), lopro_block_size=32, sensitivity="measured")
    options = measure_sensitivity(model, {"0": model[0]}, [fit, judge_x], recipe)["0"]
    assert [(o.method, o.bits, o.group_size) for o in options] == [("gptq", 2, 32), ("lopro", 3, 64)]
    acc = HessianAccumulator(model[0])
    acc.add(fit)
    for o in options:
        q = quantize_option("0", model[0], acc.h, recipe, o.method, o.bits, o.group_size)
        expected = 2 / 128 * (judge_x @ (q.dequantized_weight() - model[0].weight).T).square().sum()
        assert o.sensitivity == pytest.approx(expected.item(), rel=1e-4)
        assert o.bits_per_weight == pytest.approx(8 * q.weight_bytes() / (64 * 16))
    assert options[1].bits_per_weight == pytest.approx(3 + 24 / 64 + 16 / 16)  # LoPRo's int16 permutation counted
    with pytest.raises(QuantizationError, match="at least 2 calibration windows"):
        measure_sensitivity(model, {"0": model[0]}, [fit], recipe)


def test_estimated_lopro_plan_solves_each_layer_once(monkeypatch):
    """sensitivity='held-out' plans LoPRo options from the closed form: one solve per layer (the
    final pass), a mixed plan within the budget."""
    import edgeq.quant.allocate as allocate
    from edgeq.quant.lopro import LoProLinear
    from edgeq.quant.serialize import quantized_layers

    solves = []
    real = allocate.quantize_option
    monkeypatch.setattr(allocate, "quantize_option", lambda name, *a: solves.append(name) or real(name, *a))
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    recipe = AllocatedRecipe(skip=("lm_head",), budget=3.0, grids=(), lopro_grids=((2, 32), (2, 64), (3, 64), (4, 64)),
                             lopro_block_size=32, sensitivity="held-out")
    model = edgeq.quantize(_tiny_llama(), recipe, calib=[calib])
    layers = quantized_layers(model)
    assert sorted(solves) == sorted(layers) and all(isinstance(m, LoProLinear) for m in layers.values())
    stored = 8 * sum(m.weight_bytes() for m in layers.values()) / sum(m.in_features * m.out_features for m in layers.values())
    assert 2.7 < stored <= 3.0
    assert len({row[1:] for row in model.edgeq_recipe.plan}) > 1


def test_lopro_options_plan_meets_budget_and_reloads(lopro_allocated_llama, tmp_path):
    from edgeq.quant.lopro import LoProLinear
    from edgeq.quant.serialize import load_quantized, quantized_layers, save_quantized

    layers = quantized_layers(lopro_allocated_llama)
    stored = 8 * sum(m.weight_bytes() for m in layers.values()) / sum(m.in_features * m.out_features for m in layers.values())
    assert stored <= 3.0 and len(layers) == 14
    plan = {row[0]: tuple(row[1:]) for row in lopro_allocated_llama.edgeq_recipe.plan}
    assert plan == {n: ("lopro" if isinstance(m, LoProLinear) else "gptq", getattr(m, "core", m).bits,
                        getattr(m, "core", m).group_size) for n, m in layers.items()}
    assert {method for method, _, _ in plan.values()} == {"gptq", "lopro"}  # both kinds in one model
    report = lopro_allocated_llama.edgeq_allocation
    assert {n: (r["method"], r["bits"], r["group_size"]) for n, r in report.items()} == plan
    path = save_quantized(lopro_allocated_llama, tmp_path / "mixed.safetensors", source="huggingface")
    loaded = load_quantized(path)
    assert loaded.edgeq_recipe == lopro_allocated_llama.edgeq_recipe
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, lopro_allocated_llama(ids).logits, rtol=0, atol=0)


def test_legacy_plan_rows_are_gptq():
    from edgeq.quant.allocate import plan_rows

    assert plan_rows(AllocatedRecipe(plan=(("a", 3, 64), ("b", "lopro", 2, 192)))) == {
        "a": ("gptq", 3, 64), "b": ("lopro", 2, 192)}


def test_lopro_error_estimate_tracks_its_solve_and_counts_its_bytes():
    """LoPRo's closed form (GPTQ's, in the permuted block-rotated basis) is its solve's error up to
    one factor common to every grid, and its bits per weight are the layer's stored bytes."""
    from edgeq.quant.allocate import OptionEstimates, quantize_option

    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(256, 64)
    w = layer.weight.detach()
    x = (torch.randn(2048, 32, generator=g) @ torch.randn(32, 256, generator=g)
         + 0.3 * torch.randn(2048, 256, generator=g)) * torch.logspace(0, 1.5, 256)
    acc = HessianAccumulator(layer)
    acc.add(x)
    recipe = AllocatedRecipe(lopro_grids=((2, 64),), lopro_block_size=64, lopro_clip_steps=0)
    ratios = []
    estimates = OptionEstimates(w, acc.h, recipe)  # one basis shared by the grids
    for bits, group in ((2, 64), (2, 128), (3, 128), (4, 128)):
        q = quantize_option("l", layer, acc.h, recipe, "lopro", bits, group)
        d = q.dequantized_weight() - w
        error, bpw = estimates.lopro(bits, group)
        ratios.append(error.sum().item() / ((d @ acc.h) * d).sum().item())
        assert bpw == pytest.approx(8 * q.weight_bytes() / w.numel())
    assert max(ratios) / min(ratios) < 1.3, ratios  # measured 3.4-4.0


def test_held_out_estimate_tracks_the_held_out_error():
    """sensitivity='held-out': with ΔW = Ẽ U, column j costs (U J Uᵀ)_jj / U_jj² on the judging
    windows' Hessian J; across GPTQ and LoPRo grids it follows the held-out error of the solve."""
    from edgeq.quant.allocate import OptionEstimates, quantize_option

    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(256, 64)
    w = layer.weight.detach()
    mix = torch.randn(32, 256, generator=g)
    fit, judge = HessianAccumulator(layer), HessianAccumulator(layer)
    for acc, n in ((fit, 300), (judge, 4000)):  # a small fitting set, as 2-bit GPTQ on few windows
        acc.add((torch.randn(n, 32, generator=g) @ mix + 0.3 * torch.randn(n, 256, generator=g)) * torch.logspace(0, 1.5, 256))
    recipe = AllocatedRecipe(lopro_grids=((2, 64),), lopro_block_size=64, lopro_clip_steps=0)
    estimates = OptionEstimates(w, fit.h, recipe, judge.h)
    ratios = []
    for method, bits, group in (("lopro", 2, 64), ("lopro", 3, 128), ("lopro", 4, 128), ("gptq", 2, 64), ("gptq", 4, 128)):
        d = quantize_option("l", layer, fit.h, recipe, method, bits, group).dequantized_weight().reshape(64, -1) - w
        error, _ = getattr(estimates, method)(bits, group)
        ratios.append(error.sum().item() / ((d @ judge.h) * d).sum().item())
    assert 0.6 < min(ratios) and max(ratios) < 1.1, ratios  # measured 0.71-1.00


def test_allocated_llama_compiles_and_matches_pytorch(lopro_allocated_llama, tmp_path):
    """Rotation, GPTQ and LoPRo layers in one model (the plan holds both methods)."""
    from edgeq.runtime.executors import TvmExecutor
    from edgeq.runtime.float_floor import causal_lm_logits, float64_logits, judge

    allocated_llama = lopro_allocated_llama
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    onnx_path = edgeq.export(allocated_llama, ids, tmp_path / "llama.onnx")
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=tmp_path)
    got = TvmExecutor(artifact.path).run([ids.numpy()])[0]
    check = judge(got, causal_lm_logits(allocated_llama, ids), float64_logits(allocated_llama, ids))
    assert check.ok, check.to_dict()
    require_arm64_cross()
    arm = edgeq.compile(onnx_path, target="arm64", out_dir=tmp_path / "arm64")
    assert_aarch64_library(arm.path)


def test_cli_bits_budget_reports_the_plan(tmp_path, capsys):
    import json

    from edgeq.cli import main

    out = tmp_path / "digits.safetensors"
    assert main(["quantize", "digits-cnn", "--bits", "4", "-o", str(out), "--calib", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bits_per_weight"] <= 4.0 and result["recipe"]["method"] == "allocated"
    assert {row["layer"] for row in result["layers"]} == {row[0] for row in result["recipe"]["plan"]}
    from edgeq.quant.serialize import load_quantized

    loaded = load_quantized(out)  # the plan travels in the file's recipe metadata
    assert [list(row) for row in loaded.edgeq_recipe.plan] == result["recipe"]["plan"]
