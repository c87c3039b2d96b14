"""The package's layering, read from the source (every import, at module level or inside a
function, since a lazy import is how a cycle hides): no module imports itself through others,
the leaf libraries import no other package of ours, and ``training`` and ``evaluation`` never
import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import manifold_ssl

ROOT = Path(manifold_ssl.__file__).parent
#: Libraries that stand alone: they import nothing of ours but the leaf helpers named here
#: (``_validation``, ``_atomic``, the dispatch marks of ``dispatch``, the process-group helpers
#: of ``distributed``) and, for ``losses``, ``geometry``.
LEAVES = {
    "geometry": {"_validation", "dispatch"},
    "losses": {"_validation", "dispatch", "distributed", "geometry"},
    "data": {"_atomic", "dispatch"},
    "dispatch": set(),
    "_validation": set(),
    "schedules": set(),
    "_atomic": set(),
    "_lazy": set(),
}


def module_name(file: Path) -> str:
    parts = list(file.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["manifold_ssl", *parts])


def imports_of(file: Path) -> set[str]:
    """The ``manifold_ssl`` modules ``file`` imports (a package's ``__init__`` for a name
    imported from a package, the module itself when it is one)."""
    here = module_name(file).split(".")
    package = here if file.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # a submodule imported by name counts as that module, not its package
            named = [f"{target}.{a.name}" for a in node.names]
            candidates = [n for n in named if n in MODULES] or [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith("manifold_ssl") and name in MODULES:
                found.add(name)
    return found


MODULES = {module_name(f): f for f in ROOT.rglob("*.py")}
GRAPH = {name: imports_of(file) - {name} for name, file in MODULES.items()}


def test_no_module_imports_itself_through_others():
    # Tarjan's strongly connected components: every component must be one module
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def top(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def test_leaf_libraries_import_nothing_above_them():
    for leaf, allowed in LEAVES.items():
        for module, deps in GRAPH.items():
            if top(module) != leaf:
                continue
            above = {top(d) for d in deps} - allowed - {leaf}
            assert not above, f"{module} imports {sorted(above)}"


def test_training_and_evaluation_do_not_import_each_other():
    for a, b in (("training", "evaluation"), ("evaluation", "training")):
        for module, deps in GRAPH.items():
            if top(module) == a:
                assert not {d for d in deps if top(d) == b}, f"{module} imports {b}"


#: Where a config may be read: the composition layer, the commands and the config itself.
#: Every other package takes parts and settings (``EvalConfig`` and ``ProbesConfig`` are
#: defined beside their readers, in ``evaluation.settings`` and ``probes.settings``).
READS_CONFIG = {"config", "cli", "run", "experiments", "export"}


def test_only_the_composition_layer_and_the_commands_import_the_config():
    readers = {top(m) for m, deps in GRAPH.items() if "manifold_ssl.config" in deps}
    assert readers <= READS_CONFIG, sorted(readers - READS_CONFIG)


def test_the_composition_layer_sits_below_the_experiments():
    """``run`` turns a config into a run; the experiments (sweeps, the geometry report, the
    history) use it, never the other way."""
    for module, deps in GRAPH.items():
        if top(module) == "run":
            assert not {d for d in deps if top(d) == "experiments"}, f"{module} imports experiments"
