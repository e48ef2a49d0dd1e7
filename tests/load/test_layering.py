"""``load/`` runs Locust, which monkeypatches the standard library with gevent: it must import
nothing of the asyncio processes (``edge/``, ``mesh/``), not even lazily inside a function.

One leaf is allowed: ``mesh.errors``, the testbed's exception hierarchy (the CLI turns a
``TestbedError`` into one clear line), which imports nothing itself; the test checks that it
stays a leaf, so importing it cannot pull the asyncio side in."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import REPO_ROOT

FORBIDDEN = ("edge", "mesh")
ALLOWED = frozenset({"mesh.errors"})


def imported_modules(source: str) -> list[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth of the file."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.append(node.module)
    return names


def forbidden_imports(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for name in imported_modules(path.read_text(encoding="utf-8")):
            if name.split(".")[0] in FORBIDDEN and name not in ALLOWED:
                found.append(f"{path.relative_to(REPO_ROOT)}: {name}")
    return found


def test_load_imports_nothing_from_edge_or_mesh() -> None:
    assert forbidden_imports(REPO_ROOT / "load") == []


def test_the_allowed_modules_are_leaves() -> None:
    for name in sorted(ALLOWED):
        package = REPO_ROOT / name.split(".")[0] / "__init__.py"
        module = REPO_ROOT / (name.replace(".", "/") + ".py")
        for path in (package, module):
            assert imported_modules(path.read_text(encoding="utf-8")) in ([], ["__future__"])


def test_the_scan_sees_top_level_and_nested_imports() -> None:
    source = "import edge.cdn\ndef f():\n    from mesh.errors import TestbedError\nimport json\n"
    assert sorted(imported_modules(source)) == ["edge.cdn", "json", "mesh.errors"]
