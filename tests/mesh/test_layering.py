"""Services, the edge, the mesh and observability never import the management plane.

A service depends on a discovery client (``mesh.registry_discovery``, ``mesh.registration``),
not on ``management``: the management plane may be down, replaced or absent (compose, a
cluster) and every process must still start and serve. Lazy imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("services", "edge", "mesh", "observability")
FORBIDDEN = "management"


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``file:line module`` for each import of ``management`` (or a submodule) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == FORBIDDEN or name.startswith(FORBIDDEN + "."):
                found.append(f"{filename}:{node.lineno} {name}")
    return found


def modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_the_layers_exist() -> None:
    assert len(modules()) > 20


@pytest.mark.parametrize(
    ("source", "hits"),
    [
        ("import management.stack", 1),
        ("from management.discovery import discovery_for", 1),
        ("def f():\n    from management import cli\n", 1),
        ("from mesh.registry_discovery import discovery_for", 0),
        ("import managementish", 0),
        ("from . import management", 0),
    ],
)
def test_the_scan_sees_what_it_should(source: str, hits: int) -> None:
    assert len(forbidden_imports(source, "x.py")) == hits


def test_no_layer_imports_management() -> None:
    found = [
        hit
        for path in modules()
        for hit in forbidden_imports(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "imports of the management plane (use mesh.*): " + ", ".join(found)
