"""The package's shape holds: no import cycles, no private names imported across modules, engine
internals stay in the engine, one model registry, and the renamed checks package keeps its old
name as a deprecation shim.

The import graph is read with :mod:`ast` from the source (every ``import`` statement, at module
level and inside functions), so a cycle hidden behind a lazy import counts too.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import pluralstan as ps

PACKAGE = Path(ps.__file__).parent

#: Third-party modules whose internals only the engine may touch (its workarounds live there).
ENGINE_ONLY = ("httpstan", "stan", "cmdstanpy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement of ``module``."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append((child, None) if child in MODULES else (base, alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the pluralstan modules it imports (a package's imports of its own submodules
    excluded: a package re-exporting its children is no cycle)."""
    return {m: {t for t, _ in _imports(m)
                if t in MODULES and t != m and not t.startswith(m + ".")} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_lazy_imports():
    assert len(MODULES) > 20
    assert _cycles(_graph()) == []


def test_no_private_name_is_imported_from_another_module():
    """``from x import _name`` across modules is a seam leaking; ``pluralstan._arviz`` is a
    private *module* of the package (the one place that knows the ArviZ version), not a name."""
    leaks = [(m, f"{base}.{name}") for m in MODULES for base, name in _imports(m)
             if name and name.startswith("_") and not name.startswith("__")
             and f"{base}.{name}" not in MODULES]
    assert leaks == []


def test_only_the_engine_touches_the_engines_libraries():
    outside = [(m, target) for m in MODULES if not m.startswith("pluralstan.engine")
               for target, _ in _imports(m) if target.split(".")[0] in ENGINE_ONLY]
    assert outside == []


def test_the_model_registry_lists_gets_and_refuses_unknown_names():
    assert ps.models.list() == sorted(ps.models) == sorted(
        ["aggregate", "labeled", "unlabeled", "annotator", "covariate", "pal"])
    assert ps.models.get("annotator") is ps.models["annotator"]
    assert ps.models.get(ps.models["pal"]) is ps.models["pal"]
    with pytest.raises(ps.PluralstanError, match=r"unknown model 'nope'; known models: \["):
        ps.models.get("nope")


def test_the_old_checks_name_is_a_deprecation_shim():
    for name in [m for m in sys.modules if m == "pluralstan.workflow"
                 or m.startswith("pluralstan.workflow.")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="renamed pluralstan.checks"):
        old = importlib.import_module("pluralstan.workflow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from pluralstan.workflow.masking import masking_ratio
    import pluralstan.checks.sbc as new_sbc

    assert masking_ratio is ps.checks.masking_ratio
    assert sys.modules["pluralstan.workflow.sbc"] is new_sbc
    assert old.compare_K is ps.checks.compare_K
