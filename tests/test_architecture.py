"""The package's shape: a one-way pipeline. No module imports one that (directly or not) imports it back,
lazy imports inside functions included, and the stages before lowering never import torch.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "resgraph"


def module_name(path: pathlib.Path) -> str:
    parts = path.with_suffix("").relative_to(ROOT).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (they never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imports_of(path: pathlib.Path) -> set[str]:
    """The resgraph modules `path` imports anywhere in its body (function-level imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from . import lower` imports a module, not the package
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {module for module in found if module.split(".")[0] == "resgraph" and module != name}


IMPORTS = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(IMPORTS)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    lazy = "def f():\n    from . import api\n"
    tree = ast.parse(lazy)
    assert any(isinstance(node, ast.ImportFrom) for node in ast.walk(tree))  # function bodies are walked


STAGES = ["loader", "validate", "evaluate", "expand", "resolve", "shapes", "projections", "codegen"]


@pytest.mark.parametrize("stage", STAGES)
def test_stages_before_lowering_import_nothing_after_them(stage: str) -> None:
    later = {"resgraph.lower", "resgraph.model", "resgraph.api", "resgraph.cli", "resgraph.artifact",
             "resgraph.diagram", "resgraph.summarize", "resgraph.export_py", "resgraph.onnx_export"}
    reachable, todo = set(), [f"resgraph.{stage}"]
    while todo:
        for dep in IMPORTS.get(todo.pop(), ()):
            if dep not in reachable:
                reachable.add(dep)
                todo.append(dep)
    assert not reachable & later


def test_checking_a_spec_imports_neither_torch_nor_the_lowering() -> None:
    probe = ("import sys, resgraph\nresgraph.check('examples/resnet50.yaml')\n"
             "print(sorted(m for m in ('torch', 'resgraph.lower', 'resgraph.model') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
