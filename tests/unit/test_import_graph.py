"""The layout's rules, checked on the source with ast: no import cycle between the project's files,
``pipeline/core`` imports nothing else of the project, no project import hidden inside a function,
and libraries never import Prefect."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "dedup", "training", "flows")
LIBRARIES = ("pipeline", "dedup", "training")


def _modules() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            mod = ".".join(f.relative_to(REPO).with_suffix("").parts)
            files[mod.removesuffix(".__init__")] = f
    return files


MODULES = _modules()


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = module.split(".")[: -node.level or None] if not MODULES[module].name == "__init__.py" else module.split(".")
            base = ".".join(pkg + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def _edges(module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        for name in _imported(node, module):
            target = _target(name)
            if target and target != module:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_files():
    graph = {m: _edges(m, top_level_only=False) for m in MODULES}
    assert _cycles(graph) == []


def test_core_imports_nothing_else_of_the_project():
    bad = {m: sorted(t for t in _edges(m, False) if not t.startswith("pipeline.core"))
           for m in MODULES if m.startswith("pipeline.core")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_project_import_inside_functions():
    hidden = {}
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [n for n in _imported(node, m) if n.split(".")[0] in PACKAGES]
                if names:
                    hidden.setdefault(m, []).append(f"line {node.lineno}: {names[0]}")
    assert hidden == {}


def test_libraries_never_import_prefect():
    users = sorted(m for m in MODULES if m.split(".")[0] in LIBRARIES
                   for node in ast.walk(ast.parse(MODULES[m].read_text()))
                   for name in _imported(node, m) if name.split(".")[0] == "prefect")
    assert users == []
