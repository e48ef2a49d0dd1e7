"""YAML files whose every error names the file, the line and the column.

``load_marked(text, source)`` parses the text once for its data and once for where each value
stands, and refuses what plain loaders let through or report without a place: invalid YAML, an
empty file, a top level that is not a mapping, and duplicate keys (a plain loader silently keeps
the last one). ``Marked.problem(path, message)`` then formats ``file:line:col: path: message``
for any path into the data, falling back to the nearest ancestor that stands in the file, so a
schema error found later (by pydantic, by a cross-reference check) points at the right line.

The topology (``management.topology``) and experiment (``chaos.loader``) loaders share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mesh.errors import ConfigError

__all__ = ["KEY", "Marked", "PathT", "Where", "YamlFileError", "format_path", "load_marked"]

PathT = tuple[str | int, ...]
KEY = "<key>"
"""Last element of a path that means "the key itself", not its value."""


@dataclass(frozen=True)
class Where:
    line: int
    column: int


class YamlFileError(ConfigError):
    """The file could not be read as YAML of the right shape; ``problems`` name each place."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n  ".join(problems))


def format_path(path: PathT) -> str:
    """``("method", 1, "fault")`` -> ``method[1].fault``; the empty path is the top level."""
    out = ""
    for p in path:
        if p == KEY:
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(top level)"


@dataclass(frozen=True)
class Marked:
    """Parsed YAML data with the position of every value (and every mapping key)."""

    source: str
    data: Any
    marks: Mapping[PathT, Where]

    def where(self, path: PathT, *, key: bool = False) -> Where:
        """Where ``path`` stands (its key with ``key``), or its closest ancestor in the file."""
        if key and path:
            found = self.marks.get((*path, KEY))
            if found is not None:
                return found
        for cut in range(len(path), -1, -1):
            found = self.marks.get(path[:cut])
            if found is not None:
                return found
        return Where(1, 1)

    def problem(self, path: PathT, message: str, *, key: bool = False) -> str:
        """``file:line:col: path: message``."""
        at = self.where(path, key=key)
        return f"{self.source}:{at.line}:{at.column}: {format_path(path)}: {message}"


def _walk(node: yaml.Node, path: PathT, marks: dict[PathT, Where], dupes: list[PathT]) -> None:
    marks[path] = Where(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dupes.append((*path, key))
            seen.add(key)
            marks[(*path, key, KEY)] = Where(
                key_node.start_mark.line + 1, key_node.start_mark.column + 1
            )
            _walk(value_node, (*path, key), marks, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marks, dupes)


def load_marked(text: str, source: str, *, start_hint: str = "") -> Marked:
    """Parse ``text`` (named ``source`` in messages); raise ``YamlFileError`` when it is not
    YAML, empty, not a mapping at the top, or has a key twice. ``start_hint`` is added to the
    empty-file and top-level messages (e.g. ``"start with 'title:'"``)."""
    hint = f"; {start_hint}" if start_hint else ""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlFileError([f"{source}:{line}:{col}: not valid YAML: {exc.problem}"]) from None
    if node is None:
        raise YamlFileError([f"{source}:1:1: the file is empty{hint}"])
    marks: dict[PathT, Where] = {}
    dupes: list[PathT] = []
    _walk(node, (), marks, dupes)
    marked = Marked(source, None, marks)
    if dupes:
        raise YamlFileError(
            [marked.problem(p, f"duplicate key {p[-1]!r}; keep one", key=True) for p in dupes]
        )
    data = yaml.SafeLoader(text).get_single_data()
    if not isinstance(data, dict):
        raise YamlFileError([f"{source}:1:1: the top level must be a mapping{hint}"])
    return Marked(source, data, marks)
