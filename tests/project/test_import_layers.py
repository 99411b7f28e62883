"""Imports run one way (docs/ARCHITECTURE.md, "Layers"): every module of edgeq is parsed (ast, so
nothing is imported) and each ``import`` of edgeq, at module level or inside a function, and each
``importlib.import_module("edgeq...")``, must point to the module's own layer or a lower one.
Module-level imports must also form no cycle (a cycle makes the result depend on which module is
imported first). A deferred import inside a function may point to a sibling in the same layer
that imports this module (a registry loading its plugins on first use), never upward.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# installed package -> folder (pyproject's package-dir)
PACKAGE_DIRS = {"edgeq": "edgeq", "edgeq.passes": "passes", "edgeq.targets": "targets",
                "edgeq.runtime": "runtime", "edgeq.models": "models"}

# The layer table, lowest first: a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf", ("edgeq.errors", "edgeq._io", "edgeq._table", "edgeq._inputs", "edgeq.maths", "edgeq.external_data",
              "edgeq.runtime.ort")),  # onnxruntime sessions with stated options: export checks and pass verification use them too
    ("models", ("edgeq.models",)),
    ("opset", ("edgeq.opset",)),
    ("quant", ("edgeq.recipes", "edgeq.quant", "edgeq.model_spec")),  # model_spec reads quantized files
    ("manager", ("edgeq.pass_manager",)),  # every layer from export up runs its rewrites as registered passes
    ("export", ("edgeq.export", "edgeq.export_kv", "edgeq.export_passes", "edgeq.export_rules", "edgeq.model_info", "edgeq.tasks")),
    ("passes", ("edgeq.passes",)),
    ("targets", ("edgeq.targets",)),
    ("runtime", ("edgeq.runtime",)),
    ("api", ("edgeq", "edgeq.cli", "edgeq.commands", "edgeq.demo")),
]


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    deferred: bool  # inside a function: runs at call time, not import time


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    deferred_nodes = {id(inner) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for inner in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "edgeq"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "edgeq":
            # "from edgeq.quant import lopro" imports the module edgeq.quant.lopro
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("edgeq")):
            targets = [node.args[0].value]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; edgeq imports absolutely")
        for target in targets:
            resolved = _resolve(target, known)
            if resolved and resolved != module:
                found.append(Import(module, resolved, node.lineno, id(node) in deferred_nodes))
    return found


def all_imports() -> list[Import]:
    known = modules()
    return [imp for module, path in known.items() for imp in imports_of(module, path, known)]


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_no_upward_import():
    upward = [f"{imp.source}:{imp.line} ({LAYERS[layer_of(imp.source)][0]}) imports {imp.target} "
              f"({LAYERS[layer_of(imp.target)][0]}){' inside a function' if imp.deferred else ''}"
              for imp in all_imports() if layer_of(imp.target) > layer_of(imp.source)]
    assert not upward, "imports that point upward:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for imp in all_imports():
        if not imp.deferred:
            graph.setdefault(imp.source, set()).add(imp.target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_upward_and_deferred_imports(tmp_path):
    """The parser itself: a function-level import counts, and an upward one is caught."""
    source = tmp_path / "probe.py"
    source.write_text("import os\n\ndef f():\n    from edgeq.runtime.validate import compare\n")
    known = {"edgeq.quant.probe": source, "edgeq.runtime.validate": source}
    (imp,) = imports_of("edgeq.quant.probe", source, known)
    assert imp.target == "edgeq.runtime.validate" and imp.deferred
    assert layer_of(imp.target) > layer_of(imp.source)
