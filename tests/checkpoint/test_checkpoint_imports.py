"""No import cycles: each checkpoint module imports on its own in a fresh interpreter, and the
module-level imports of the whole package form no cycle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "openseason"
FRESH = ["openseason.checkpoint.full", "openseason.checkpoint.peft", "openseason.checkpoint.load",
         "openseason.checkpoint.training", "openseason.checkpoint.distributed", "openseason.fileio"]


def test_each_module_imports_first_in_a_fresh_interpreter():
    code = ("import importlib, subprocess, sys\n"
            "bad = [m for m in sys.argv[1:] if subprocess.run([sys.executable, '-c', f'import {m}'],"
            " capture_output=True).returncode]\nprint(bad)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *FRESH], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], lazy: bool = False) -> set[str]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in (ast.walk(tree) if lazy else tree.body):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:   # `from pkg import submodule` needs the submodule, not all of pkg
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    found &= modules
    return found - {name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph(lazy: bool) -> dict[str, set[str]]:
    files = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules, lazy) for p in files}


def test_no_module_level_import_cycle():
    graph = _graph(lazy=False)
    assert graph["openseason.checkpoint.training"] >= {"openseason.checkpoint.full", "openseason.peft"}  # sees edges
    assert _cycles(graph) == []


def test_checkpoint_modules_have_no_cycle_even_through_lazy_imports():
    """A function-level import hides a cycle from the interpreter, not from the reader (checkpoint.py
    and peft/checkpoint.py used to import each other that way)."""
    graph = _graph(lazy=True)
    touching = [c for c in _cycles(graph) if any(m.startswith(("openseason.checkpoint", "openseason.fileio"))
                                                 for m in c)]
    assert touching == []
