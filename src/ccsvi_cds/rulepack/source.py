"""Reading pack files so that every value keeps its file, line and column.

ruamel.yaml's round-trip loader records positions for mappings and sequences (JSON is YAML too), which
lets a pydantic error location like ("when", 0, "order", "where") point at a line an author can open.
A valid JSON file (a value set) is read with `json` and given to ruamel only when a position is asked for:
ruamel is about a hundred times slower, and every process that loads the pack pays for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a pack file, where it is, and how to fix it."""

    file: str
    line: int
    column: int
    message: str
    hint: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"
        return f"{text} (fix: {self.hint})" if self.hint else text


class SourceError(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class SourceDoc:
    """A parsed file: plain data for validation, the ruamel tree for positions."""

    path: Path
    display: str
    parsed: Any  # the ruamel tree, or None when the file was read as plain JSON (see `tree`)
    data: Any
    text: str = field(default="", repr=False, compare=False)

    @cached_property
    def tree(self) -> Any:
        return self.parsed if self.parsed is not None else YAML(typ="rt").load(self.text)

    def locate(self, loc: tuple[Any, ...]) -> tuple[int, int]:
        """1-based (line, column) of the deepest node on `loc` that exists."""
        node, line, col = self.tree, 0, 0
        if isinstance(node, (CommentedMap, CommentedSeq)):
            line, col = node.lc.line, node.lc.col
        for key in loc:
            if isinstance(node, CommentedMap) and key in node:
                kl, kc = node.lc.key(key)
                line, col = kl, kc
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
                line, col = node.lc.item(key)
                node = node[key]
            else:
                break
        return line + 1, col + 1

    def problem(self, loc: tuple[Any, ...], message: str, hint: str = "", severity: str = "error") -> Problem:
        line, col = self.locate(loc)
        return Problem(self.display, line, col, message, hint, severity)


def _plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def read_doc(path: Path, display: str) -> SourceDoc:
    yaml = YAML(typ="rt")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(Problem(display, 1, 1, f"cannot read file: {exc}",
                                  "check that the file exists and is UTF-8 text")) from exc
    if path.suffix == ".json":
        try:
            return SourceDoc(path, display, None, json.loads(text, object_pairs_hook=_unique_keys), text)
        except ValueError:
            pass  # ruamel reports it, with its line and column
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SourceError(
            Problem(display, line, col, f"not valid YAML/JSON: {exc.problem or exc.context}",
                    "check indentation, quotes and brackets around this line")
        ) from exc
    except Exception as exc:  # ruamel raises a few non-marked errors (e.g. duplicate keys)
        raise SourceError(Problem(display, 1, 1, f"not valid YAML/JSON: {exc}",
                                  "check the file's syntax (e.g. no duplicate keys)")) from exc
    return SourceDoc(path, display, tree, _plain(tree), text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)
