"""The package's shape, checked on its import graph (read with `ast`, nothing imported).

- The library (`api`, `face`, `gallery`, `rerank`, `calibrate`) never imports the command line
  or the web app, not even lazily inside a function.
- Module-level imports form no cycle. Imports inside functions (the registries' lazy loaders,
  optional heavy dependencies) are allowed to point back; they run after every module loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import facerank

ROOT = Path(facerank.__file__).parent
LIBRARY = ("facerank.api", "facerank.face", "facerank.gallery", "facerank.rerank",
           "facerank.calibrate")
FRONT_ENDS = ("facerank.cli", "facerank.web")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _targets(node: ast.Import | ast.ImportFrom, here: str) -> list[str]:
    """facerank modules an import statement loads (a `from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            pkg = here.split(".")[: len(here.split(".")) - node.level + (here in _PACKAGES)]
            base = ".".join([*pkg, base] if base else pkg)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    return [n for n in names if n == "facerank" or n.startswith("facerank.")]


_PACKAGES = {n for n, p in MODULES.items() if p.name == "__init__.py"}


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(module-level imports, all imports) of one module; TYPE_CHECKING blocks are skipped."""
    tree = ast.parse(MODULES[name].read_text())
    top: set[str] = set()
    every: set[str] = set()

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found = _targets(child, name)
                every.update(found)
                if depth == 0:
                    top.update(found)
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, depth + inner)

    visit(tree, 0)
    return top, every


GRAPH = {name: _imports(name) for name in MODULES}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _within(n, LIBRARY)))
def test_library_never_imports_front_ends(name: str) -> None:
    bad = sorted(t for t in GRAPH[name][1] if _within(t, FRONT_ENDS))
    assert not bad, f"{name} imports {bad}"


def test_no_module_level_import_cycles() -> None:
    edges = {n: {t for t in top if t in MODULES and t != n} for n, (top, _) in GRAPH.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def walk(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                walk(t)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            walk(n)


def test_the_checks_can_fail() -> None:
    """The import reader sees a lazy import inside a function and skips TYPE_CHECKING."""
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import facerank.cli\n"
           "def f():\n    from facerank.web import app\n")
    tree = ast.parse(src)
    lazy = [n for n in ast.walk(tree.body[2]) if isinstance(n, ast.ImportFrom)]
    assert _targets(lazy[0], "facerank.api") == ["facerank.web.app"]


def test_public_names_are_unique() -> None:
    """`facerank.Gallery` (photos in, the one-line API) and the stored gallery it wraps are
    different classes with different names."""
    from facerank import api, gallery

    assert api.Gallery.__name__ != gallery.StoredGallery.__name__
    assert not hasattr(gallery, "Gallery")
