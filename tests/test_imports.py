"""The house rules of DESIGN.md, checked on the source: nothing in gpu_jobs/ imports the engine
(pipelines/), and the packages import each other in no circle (issue 12, "the house")."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("pipelines", "stages", "schemas", "catalog", "gpu_jobs")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            # A module's own package is imported before it in any case (a registry in __init__
            # importing its submodules is no circle): only edges to other modules count.
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walk_sees_real_imports():
    g = _graph()
    assert "pipelines.engine.task" in g["pipelines.runners.local"]  # a top-level import
    assert "gpu_jobs.lm" in g["stages.blocks.scoring"]  # one inside a function


def test_gpu_jobs_never_import_the_engine():
    bad = [(a, b) for a, deps in _graph().items() if a.startswith("gpu_jobs") for b in deps
           if b.startswith("pipelines")]
    assert bad == []


def test_no_import_circles():
    g = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert circles == []


def _product(module: str) -> str | None:
    """The product a module of stages/ belongs to (``stages.icp.core`` -> ``icp``); None for the
    shared blocks, the contract and the registry."""
    parts = module.split(".")
    if parts[0] != "stages" or len(parts) < 3 or parts[1] == "blocks":
        return None
    return parts[1]


def test_products_do_not_import_each_other():
    """A product's package uses the shared blocks (stages/blocks), never another product: what two
    products share moves to stages/blocks (issue 34)."""
    bad = sorted((a, b) for a, deps in _graph().items() for b in deps
                 if _product(a) and _product(b) and _product(a) != _product(b))
    assert bad == []


def test_only_the_cli_imports_the_driver():
    bad = sorted(a for a, deps in _graph().items()
                 if "pipelines.driver" in deps and not a.startswith("pipelines.commands"))
    assert bad == []


def test_runners_reach_the_engine_only_through_its_task_entry_point():
    """Runners decide where tasks run; what a task is belongs to the engine, behind one module."""
    bad = sorted((a, b) for a, deps in _graph().items() if a.startswith("pipelines.runners") for b in deps
                 if b.startswith("pipelines.engine") and b != "pipelines.engine.task")
    assert bad == []


def test_stages_never_import_the_engine_or_the_catalog():
    bad = sorted((a, b) for a, deps in _graph().items() if a.startswith("stages") for b in deps
                 if b.startswith(("pipelines", "catalog")))
    assert bad == []


def test_gpu_jobs_use_only_schemas_and_schemas_use_nothing_of_ours():
    """DESIGN.md's directions: a scoring job runs without the engine, the catalog or a stage (it is
    handed a catalog object), and the schemas stand alone."""
    g = _graph()
    bad = sorted((a, b) for a, deps in g.items() for b in deps
                 if (a.startswith("gpu_jobs") and not b.startswith(("gpu_jobs", "schemas")))
                 or (a.startswith("schemas") and not b.startswith("schemas")))
    assert bad == []
