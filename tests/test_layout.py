"""The package's layout holds: data flows one way, one home for the store's attributes, small modules.

Imports are read from the source (every ``import`` and ``from`` statement,
at the top of a module or inside a function), so a late import cannot hide
a dependency that runs against the flow.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "embedcache"

# Stages in the order data flows; a module imports only from its own stage or earlier ones.
STAGES = [
    ("errors", "files", "claims", "shared", "device", "config", "layers", "geometry", "workers", "threads",
     "progress"),
    ("datasets",),
    ("encoders",),
    ("store",),
    ("extract", "cells"),
    ("train", "probes"),
    ("postprocess",),
    ("metrics",),
    ("infer",),
    ("report",),
    ("pipeline",),
    ("cli", "__main__"),
]
MAX_LINES = 600


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (embedcache.open_store)
    for i, group in enumerate(STAGES):
        if parts[1] in group:
            return i
    raise AssertionError(f"{module} belongs to no stage of the flow; add it to STAGES in {__file__}")


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported embedcache module, line, at module level) of every import statement of a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "embedcache":
            names = [f"{node.module}.{a.name}" for a in node.names]
            # "from embedcache.probes import fit" imports a submodule; "from x import f" a name of x.
            for name in names:
                target = name if (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / name.replace(".", "/")).is_dir() else node.module
                out.append((target, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.split(".")[0] == "embedcache"]
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
ROOT = PACKAGE.parent


def _defined(module: str) -> set[str] | None:
    """Names a module defines or imports at its top level (None: no such module)."""
    base = ROOT / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        return None
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            names.update(e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts
                         if isinstance(e, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("where", ["embedcache", "benchmarks", "tests"])
def test_every_embedcache_import_resolves(where):
    """Late imports inside functions, benchmarks and tests name modules and objects that exist."""
    broken = []
    for f in sorted((ROOT / where).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "embedcache"):
                continue
            names = _defined(node.module)
            if names is None:
                broken.append(f"{f.relative_to(ROOT)}:{node.lineno}: no module {node.module}")
                continue
            for a in node.names:
                if a.name not in names and _defined(f"{node.module}.{a.name}") is None:
                    broken.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.module} has no {a.name}")
    assert not broken, "\n".join(broken)


def test_every_import_follows_the_flow():
    against = []
    for f in FILES:
        here = _stage(_module(f))
        for target, line, _ in _imports(f):
            there = _stage(target)
            if here is not None and there is not None and there > here:
                against.append(f"{f.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not against, "imports from a later stage of the flow:\n" + "\n".join(against)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for f in FILES:
        graph[_module(f)] = {t for t, _, top in _imports(f) if top}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str):
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if not state.get(t):
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)


def test_only_the_store_reads_its_attributes():
    raw = re.compile(r"attrs\[|attrs\.get")
    outside = [f"{f.relative_to(PACKAGE.parent)}:{i}" for f in FILES if "store" not in f.relative_to(PACKAGE).parts[:1]
               for i, line in enumerate(f.read_text().splitlines(), 1) if raw.search(line)]
    assert not outside, "store attributes read outside embedcache/store/: " + ", ".join(outside)


def test_no_module_is_too_long():
    long = {str(f.relative_to(PACKAGE.parent)): n for f in FILES if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


@pytest.mark.parametrize("module", ["embedcache.config", "embedcache.pipeline.spec", "embedcache.cli"])
def test_settings_and_the_cli_load_without_torch(module):
    code = f"import sys, {module}; sys.exit(int('torch' in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"importing {module} imports torch" + res.stderr
