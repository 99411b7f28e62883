"""The support matrix (issue #17): every architecture x preset family x stage, run on random-init
tiny configs, written to ``docs/SUPPORT.md``.

    python tools/support_matrix.py                 # runs every cell, rewrites docs/SUPPORT.md
    python tools/support_matrix.py --arch bert --json

Each cell runs the stages in order: quantize, export (ONNX), onnxruntime, TVM cpu (compile and
run), arm64 (cross-compile, no device run); every cell runs every stage. Its outcome comes from running them: ``ok`` with the
error against the quantized PyTorch model (what every executor must match, within
``TOLERANCE``) and against the float model (what the quantization costs, reported); ``refused``
with the reason of the ``EdgeqError`` that ``edgeq.quantize`` raised before any work; ``failed``
with the stage and its error otherwise. ``tests/api/test_support_matrix.py`` runs the matrix, holds
the expected outcome of each cell and checks that docs/SUPPORT.md is what this script writes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SUPPORT.md"
VOCAB, SEQ, IMAGE = 128, 8, 16
# executors against the quantized PyTorch model: float32 in another summation order
TOLERANCE = {"max_rel": 2e-2, "min_cosine": 0.999}
# the quantized model against the float one: 2-4 bit weights of a random model move its outputs;
# a cosine below this means the quantization (or a rewrite such as a rotation) broke the model
FLOAT_MIN_COSINE = 0.9


@dataclass(frozen=True)
class Arch:
    name: str
    kind: str  # decoder, encoder, vision, cnn
    make: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]]
    # layers kept in float by the weight-only families (as a user passes ``skip=``): a CNN's RGB
    # stem has 27 (3x3x3) or 147 (7x7x3) inputs and a 3x3 depthwise conv 9, which no 4-bit group
    # or byte divides; the preset alone refuses them, naming the layer
    float_layers: tuple[str, ...] = ()


def _hf(config_name: str, model_name: str, **config) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, model_name)(getattr(transformers, config_name)(**config)).eval()

    return make


# One block: every kernel a model compiles to is there once per distinct shape, so a second block
# adds export and compile time and no new code path (Gemma2 keeps two: it alternates sliding-window
# and global attention).
_DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
_ENCODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=64)


def _token_ids(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, VOCAB, (1, SEQ), generator=g),)


def _tokens_mask_types(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    types = torch.zeros_like(ids)
    types[:, SEQ // 2:] = 1
    return ids, torch.ones_like(ids), types


def _tokens_mask(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    return ids, torch.ones_like(ids)


def _image(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 3, IMAGE, IMAGE, generator=g),)


class _InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand, 3x3 depthwise, squeeze-excite (V3), 1x1 project."""

    def __init__(self, channels: int, expand: int, act: type[nn.Module], squeeze_excite: bool):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), act())
        self.squeeze_excite = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden // 4, 1), nn.ReLU(),
                                            nn.Conv2d(hidden // 4, hidden, 1), nn.Hardsigmoid()) if squeeze_excite else None
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        if self.squeeze_excite is not None:
            h = h * self.squeeze_excite(h)
        return x + self.project(h)


def _mobilenet(v3: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        act = nn.Hardswish if v3 else nn.ReLU6
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), act(),
            _InvertedResidual(16, 2, act, squeeze_excite=v3), _InvertedResidual(16, 2, act, squeeze_excite=v3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        return _settled(model)

    return make


def _settled(model: nn.Module) -> nn.Module:
    """BatchNorm statistics that are not the identity (a random-init model's are), so that folding
    them is exercised."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


ARCHS = {a.name: a for a in [
    Arch("llama", "decoder", _hf("LlamaConfig", "LlamaForCausalLM", **_DECODER), _token_ids),
    Arch("mistral", "decoder", _hf("MistralConfig", "MistralForCausalLM", **_DECODER), _token_ids),
    Arch("qwen2", "decoder", _hf("Qwen2Config", "Qwen2ForCausalLM", **_DECODER), _token_ids),
    Arch("qwen3", "decoder", _hf("Qwen3Config", "Qwen3ForCausalLM", head_dim=16, **_DECODER), _token_ids),
    Arch("phi3", "decoder", _hf("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, **_DECODER), _token_ids),
    Arch("gemma", "decoder", _hf("GemmaConfig", "GemmaForCausalLM", head_dim=16, **_DECODER), _token_ids),
    Arch("gemma2", "decoder", _hf("Gemma2Config", "Gemma2ForCausalLM", head_dim=16, **{**_DECODER, "num_hidden_layers": 2},
                                  sliding_window=4), _token_ids),
    Arch("gpt2", "decoder", _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=64, n_layer=1, n_head=4,
                                n_positions=64), _token_ids),
    Arch("bert", "encoder", _hf("BertConfig", "BertModel", **_ENCODER), _tokens_mask_types),
    Arch("roberta", "encoder", _hf("RobertaConfig", "RobertaModel", pad_token_id=1, **_ENCODER), _tokens_mask),
    # MiniLM's shape class (all-MiniLM-L6-v2: 384 wide = 6 x 64, 12 heads of 32): 192 wide, 6 heads of 32
    Arch("minilm", "encoder", _hf("BertConfig", "BertModel", **{**_ENCODER, "hidden_size": 192, "intermediate_size": 768,
                                                                 "num_attention_heads": 6}), _tokens_mask_types),
    Arch("vit", "vision", _hf("ViTConfig", "ViTForImageClassification", hidden_size=64, intermediate_size=128,
                              num_hidden_layers=1, num_attention_heads=4, image_size=IMAGE, patch_size=8,
                              num_labels=10), _image),
    Arch("resnet", "cnn", lambda: _settled(_hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16,
                                               hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                                               num_labels=10)()), _image, ("resnet.embedder.*",)),
    Arch("mobilenet-v2", "cnn", _mobilenet(v3=False), _image, ("0", "*.depthwise.0")),
    Arch("mobilenet-v3", "cnn", _mobilenet(v3=True), _image, ("0", "*.depthwise.0")),
]}

# preset family -> (preset run, the architecture kinds it is meant for)
_WEIGHT_ONLY = ("decoder", "encoder", "vision", "cnn")
FAMILIES = {
    "rtn-grouped": ("w4g32-rtn", _WEIGHT_ONLY),
    "rtn-per-channel": ("w4-rtn", _WEIGHT_ONLY),
    "gptq-grouped": ("w4g32-gptq", _WEIGHT_ONLY),
    "hadamard": ("w4g32-hadamard-rtn", _WEIGHT_ONLY),
    "lrqmm": ("w4-lrqmm", ("decoder", "encoder", "vision")),
    "w8a8": ("w8a8", ("cnn",)),
    "dyadic": ("w8a8-dyadic", ("cnn",)),
}
INTEGER_METHODS = ("w8a8", "dyadic")  # quantize every layer, the stem included
STAGES = ("quantize", "export", "onnxruntime", "tvm-cpu", "arm64")


@dataclass
class Cell:
    arch: str
    family: str
    preset: str
    outcome: str = "ok"  # ok, refused, failed
    reason: str = ""  # a refusal's or a failure's message
    failed_stage: str = ""
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ok" / "skipped: why"
    error_vs_quantized: dict[str, float] = field(default_factory=dict)  # executor -> max_rel
    cosine_vs_float: float | None = None
    max_rel_vs_float: float | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time goes (not rendered)


def run_cell(arch: Arch, family: str, work: Path) -> Cell:
    from edgeq.errors import EdgeqError

    preset = FAMILIES[family][0]
    cell = Cell(arch.name, family, preset)
    start = time.perf_counter()
    try:
        _run_stages(arch, preset, work, cell)
    except EdgeqError as exc:
        if cell.stages:  # quantize went through: a later stage refusing is a failure, not a design choice
            cell.outcome, cell.failed_stage = "failed", _next_stage(cell)
        else:
            cell.outcome, cell.failed_stage = "refused", "quantize"
        cell.reason = _one_line(exc)
    except Exception as exc:  # a traceback: reported in the cell, and a test failure
        cell.outcome, cell.failed_stage, cell.reason = "failed", _next_stage(cell), f"{type(exc).__name__}: {_one_line(exc)}"
    cell.seconds = round(time.perf_counter() - start, 1)
    return cell


def _run_stages(arch: Arch, preset: str, work: Path, cell: Cell) -> None:
    import edgeq
    from edgeq.runtime.executors import OrtExecutor, TorchExecutor, TvmExecutor
    from edgeq.runtime.validate import compare
    from edgeq.targets import get_target

    clock = _StageClock(cell)
    float_model = arch.make()
    g = torch.Generator().manual_seed(1)
    example = arch.inputs(g)
    calib = [arch.inputs(g) for _ in range(4)]
    recipe = edgeq.PRESETS[preset]
    if arch.float_layers and recipe.method not in INTEGER_METHODS:
        recipe = dataclasses.replace(recipe, skip=(*recipe.skip, *arch.float_layers))
    qmodel = edgeq.quantize(copy.deepcopy(float_model), recipe,
                            calib=[c if len(c) > 1 else c[0] for c in calib] if recipe.needs_calibration else None)
    inputs = [x.numpy() for x in example]
    want = TorchExecutor(qmodel).run(inputs)
    reference = TorchExecutor(float_model).run(inputs)
    vs_float = compare("float", reference[0], want[0])
    cell.cosine_vs_float, cell.max_rel_vs_float = round(vs_float.cosine, 4), _sig(vs_float.max_rel)
    if not vs_float.cosine >= FLOAT_MIN_COSINE:
        raise _Numerics(f"quantized PyTorch model vs float: cosine {vs_float.cosine:.3f} < {FLOAT_MIN_COSINE}")
    clock.done("quantize")  # the quantized model runs in PyTorch, near the float one
    onnx_path = work / f"{arch.name}-{preset}.onnx"
    if recipe.method == "dyadic":  # integer-only: the QDQ form through edgeq.export, then integerized
        from edgeq.passes.integerize import export_integer

        export_integer(qmodel, example, onnx_path)
    else:
        edgeq.export(qmodel, example, onnx_path)
    clock.done("export")
    _check("onnxruntime", want, OrtExecutor(onnx_path).run(inputs), cell)
    clock.done("onnxruntime")
    artifact = edgeq.compile(onnx_path, target="cpu", out_dir=work / "cpu", name=f"{arch.name}-{preset}")
    _check("tvm-cpu", want, TvmExecutor(artifact.path).run(inputs), cell)
    clock.done("tvm-cpu")
    if shutil.which(get_target("arm64").cross_compiler) is None:
        cell.stages["arm64"] = "skipped: no aarch64 cross compiler"
        return
    cross = edgeq.compile(onnx_path, target="arm64", out_dir=work / "arm64", name=f"{arch.name}-{preset}")
    if not cross.path.stat().st_size:
        raise _Numerics("arm64 artifact is empty")
    clock.done("arm64")


class _StageClock:
    """Marks a cell's stages done, with the seconds each took."""

    def __init__(self, cell: Cell):
        self.cell, self.last = cell, time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.cell.stages[stage] = "ok"
        self.cell.stage_seconds[stage] = round(now - self.last, 2)
        self.last = now


class _Numerics(Exception):
    """An executor (or the quantized model) outside its tolerance."""


def _check(stage: str, want: list[np.ndarray], got: list[np.ndarray], cell: Cell) -> None:
    from edgeq.runtime.validate import compare

    worst = 0.0
    for i, (w, o) in enumerate(zip(want, got)):
        n = compare(stage, w, o)
        worst = max(worst, n.max_rel)
        if not (n.max_rel <= TOLERANCE["max_rel"] and (n.cosine >= TOLERANCE["min_cosine"] or n.max_abs == 0)):
            raise _Numerics(f"output {i}: max_rel {n.max_rel:.2e}, cosine {n.cosine:.5f} vs the quantized PyTorch model")
    if len(want) != len(got):
        raise _Numerics(f"{len(got)} outputs, PyTorch gives {len(want)}")
    cell.error_vs_quantized[stage] = _sig(worst)
    cell.stages[stage] = "ok"


def _next_stage(cell: Cell) -> str:
    return next(s for s in STAGES if s not in cell.stages)


def _sig(x: float) -> float:
    return float(f"{x:.2g}")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def cells_for(archs: list[str] | None = None, families: list[str] | None = None) -> list[tuple[str, str]]:
    """The (architecture, family) pairs of the matrix: each family on the kinds it is meant for."""
    return [(a, f) for a, arch in ARCHS.items() if not archs or a in archs
            for f, (_, kinds) in FAMILIES.items() if (not families or f in families) and arch.kind in kinds]


def run_matrix(pairs: list[tuple[str, str]], work: Path, progress: bool = True, workers: int = 1) -> list[Cell]:
    """The cells of ``pairs``. ``workers`` > 1 starts that many processes (each on one thread: a
    cell is mostly single-threaded export and compile work), each living for many cells (torch,
    transformers and TVM are imported once per process) and taking the next unclaimed cell when it
    is done with one, the slowest kinds first."""
    if workers > 1:
        return _run_in_processes(pairs, work, workers)
    return _run_cells(pairs, work, progress)


def _run_cells(pairs, work: Path, progress: bool, claims: Path | None = None, save: Path | None = None) -> list[Cell]:
    """Run ``pairs`` in order; with ``claims`` (a folder shared by the workers) only the cells no
    other worker has claimed (an exclusive create of the cell's file there claims it). ``save``:
    the cells done so far, rewritten (write then rename) after each."""
    import os

    from tqdm import tqdm

    cells = []
    for arch, family in (bar := tqdm(pairs, desc="support matrix", disable=not progress)):
        if claims is not None:
            try:
                os.close(os.open(claims / f"{arch}--{family}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        cells.append(run_cell(ARCHS[arch], family, work))
        c = cells[-1]
        bar.write(f"{c.arch:13s} {c.family:16s} {c.outcome:8s} {c.seconds:6.1f} s  {c.failed_stage} {c.reason[:120]}")
        if save is not None:
            tmp = save.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(c) for c in cells], indent=1))
            tmp.replace(save)
    return cells


# rough seconds of one cell by family (GPTQ solves per layer; the integer CNNs are small graphs):
# the workers take the long cells first, so that no worker is left with a long one at the end
_COST = {"gptq-grouped": 3, "hadamard": 2, "lrqmm": 2}


def _run_in_processes(pairs, work: Path, workers: int) -> list[Cell]:
    import os
    import subprocess

    ordered = sorted(pairs, key=lambda p: (-_COST.get(p[1], 1), -(ARCHS[p[0]].kind == "decoder")))
    order = work / "cells.json"
    order.write_text(json.dumps(ordered))
    claims = work / "claims"
    claims.mkdir()
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(workers):
        out = work / f"cells-{i}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(order), str(claims), str(out), str(work / f"w{i}")]
        procs.append((out, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    saved, errors = {}, []
    for out, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"support matrix worker failed ({proc.returncode}): {err[-2000:]}")
        if out.exists():
            saved.update({(c["arch"], c["family"]): Cell(**c) for c in json.loads(out.read_text())})
    # a worker that died (a crash in native code) leaves the cell it was running unsaved: failed
    died = " / ".join(e[-300:] for e in errors) or "no worker saved it"
    return [saved.get(p) or Cell(p[0], p[1], FAMILIES[p[1]][0], "failed", f"worker died: {died}", "quantize") for p in pairs]


def _worker(order: Path, claims: Path, out: Path, work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    out.write_text("[]")
    _run_cells([tuple(p) for p in json.loads(order.read_text())], work, progress=False, claims=claims, save=out)
    return 0


def table_row(arch: str, cells: list[Cell], families: list[str] | None = None) -> str:
    """One architecture's line of the outcome table."""
    by = {c.family: c for c in cells}
    row = []
    for f in families or list(FAMILIES):
        c = by.get(f)
        meant = ARCHS[arch].kind in FAMILIES[f][1]
        row.append(("not run" if meant else "-") if c is None else f"failed ({c.failed_stage})" if c.outcome == "failed"
                   else c.outcome)
    return f"| {arch} | " + " | ".join(row) + " |"


def render(cells: list[Cell]) -> str:
    """docs/SUPPORT.md: one table (architecture x family), then each cell's figures and reasons.
    Timings are left out so that the file only changes when an outcome or a figure does."""
    families = [f for f in FAMILIES if any(c.family == f for c in cells)]
    archs = [a for a in ARCHS if any(c.arch == a for c in cells)]
    lines = [
        "# Support matrix",
        "",
        "Generated by `python tools/support_matrix.py` (do not edit by hand); `tests/api/test_support_matrix.py`",
        "runs the same cells and fails if this file differs from what they give. Every model is a",
        "random-init tiny configuration (hidden 64, MiniLM 192; 1 block, Gemma2 2; vocabulary 128; 16x16 images).",
        "",
        "A cell runs, in order: `edgeq.quantize` with the family's preset, `edgeq.export` (ONNX),",
        "onnxruntime, TVM `cpu` (compile and run) and an `arm64` cross-compile (no device run).",
        f"**ok**: every executor within max relative error {TOLERANCE['max_rel']} and cosine {TOLERANCE['min_cosine']}",
        "of the quantized PyTorch model, and the quantized model within cosine "
        f"{FLOAT_MIN_COSINE} of the float model. **refused**: `edgeq.quantize` raised an `EdgeqError`",
        "before any work (the reason is listed below). **failed**: a later stage raised or missed its",
        "tolerance. `-`: the family is not meant for this kind of model. Every cell runs every stage.",
        "",
        "Layers no weight group fits stay float in the weight-only families, passed as `skip=` (what a",
        "user does): CNN stems (3 input channels: 27 or 147 inputs) and MobileNet's 3x3 depthwise convs",
        "(9 inputs per output channel), which no 4-bit group or byte divides. Without that skip the",
        "presets refuse the model before any work, naming the first such layer",
        "(`tests/api/test_support_matrix.py::test_unfitting_layers_are_refused_without_skip`).",
        "",
        "Hadamard (QuaRot) is refused by design outside the decoders of `edgeq.quant.architectures`",
        "(docs/ARCHITECTURES.md): it folds each norm into the linears that read it and rotates the",
        "residual stream. BERT, RoBERTa and MiniLM normalize after the residual add (post-LayerNorm),",
        "so no norm sits in front of those linears and the stream passes through a LayerNorm, which",
        "does not commute with a rotation; a CNN has no stream of linears to rotate. ViT is pre-LayerNorm",
        "like GPT-2 and could take GPT-2's centring, but no ViT layout is registered.",
        "",
        "| architecture | " + " | ".join(f"{f} (`{FAMILIES[f][0]}`)" for f in families) + " |",
        "|---|" + "---|" * len(families),
    ]
    lines += [table_row(a, [c for c in cells if c.arch == a], families) for a in archs]
    lines += ["", "## Figures of the cells that run", "",
              "Max relative error of each executor against the quantized PyTorch model (the largest over the",
              "model's outputs), and the quantized model's first output against the float model's.", "",
              "| architecture | family | onnxruntime | tvm-cpu | arm64 | vs float: cosine | vs float: max rel |",
              "|---|---|---|---|---|---|---|"]
    for c in cells:
        if c.outcome == "ok":
            e = c.error_vs_quantized
            lines.append(f"| {c.arch} | {c.family} | {e.get('onnxruntime')} | {e.get('tvm-cpu')} | "
                         f"{c.stages.get('arm64', '')} | {c.cosine_vs_float} | {c.max_rel_vs_float} |")
    other = [c for c in cells if c.outcome != "ok"]
    if other:
        lines += ["", "## Refusals and failures", "", "| architecture | family | outcome | stage | reason |", "|---|---|---|---|---|"]
        lines += [f"| {c.arch} | {c.family} | {c.outcome} | {c.failed_stage} | {c.reason.replace('|', '/')} |" for c in other]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="only these architectures (repeat)")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these preset families (repeat)")
    parser.add_argument("-o", "--out", type=Path, default=None, help=f"write the table here (default {DOC.relative_to(ROOT)} for the whole matrix)")
    parser.add_argument("--json", action="store_true", help="print the cells as JSON")
    parser.add_argument("--save-cells", type=Path, help="also write the cells as JSON to this file")
    parser.add_argument("--workers", type=int, default=1, help="processes that run the cells (default 1)")
    parser.add_argument("--worker", type=Path, nargs=4, help=argparse.SUPPRESS)  # run_matrix's worker processes
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table on stdout")
    parser.add_argument("--from-cells", type=Path, nargs="+", help="run nothing: render the cells saved by "
                        "--save-cells runs (a later file's cell replaces an earlier one's)")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    pairs = cells_for(args.arch, args.family)
    start = time.perf_counter()
    if args.from_cells:
        saved = {(c["arch"], c["family"]): Cell(**c) for path in args.from_cells for c in json.loads(path.read_text())}
        cells = [saved[p] for p in pairs if p in saved]
    else:
        with tempfile.TemporaryDirectory(prefix="edgeq-matrix-") as tmp:
            cells = run_matrix(pairs, Path(tmp), progress=not args.quiet, workers=args.workers)
    total = time.perf_counter() - start
    if args.save_cells:
        args.save_cells.write_text(json.dumps([asdict(c) for c in cells], indent=1))
    whole = not (args.arch or args.family) and len(cells) == len(pairs)
    out = args.out or (DOC if whole else None)
    text = render(cells)
    if out is not None:
        out.write_text(text)
    if args.json:
        print(json.dumps([asdict(c) for c in cells], indent=1))
    elif not args.quiet:
        print(text)
        print(f"{len(cells)} cells in {total:.0f} s: " + ", ".join(
            f"{k} {sum(c.outcome == k for c in cells)}" for k in ("ok", "refused", "failed")))
        print("seconds by stage, all cells: " + ", ".join(
            f"{s} {sum(c.stage_seconds.get(s, 0) for c in cells):.0f}" for s in STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
