"""Sorted part files: how engines hand findings and errors to the output writer.

A part is lines ``sortkey TAB json``, sorted by key. Any number of parts merge (heapq) into one globally
sorted stream with memory for one line per part, so output order never depends on the engine or on how
the work was split.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


def write_part(path: Path, lines: Iterable[tuple[str, bytes]]) -> Path | None:
    """Write (key, json) pairs sorted by key; no file when there is nothing to write."""
    items = sorted(lines)
    if not items:
        return None
    with open(path, "wb") as fh:
        fh.write(b"".join(k.encode() + b"\t" + v + b"\n" for k, v in items))
    return path


def _read(path: Path) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as fh:
        for line in fh:
            k, v = line.rstrip(b"\n").split(b"\t", 1)
            yield k.decode(), v


def merge_parts(paths: Iterable[Path]) -> Iterator[bytes]:
    """The JSON lines of all parts in global key order."""
    for _, v in heapq.merge(*(_read(p) for p in sorted(paths))):
        yield v


@dataclass
class EngineResult:
    """What an engine hands back: read counts, join figures, and sorted parts for findings and errors."""

    read_counts: dict[str, int] = field(default_factory=dict)
    patients: int = 0  # patients with at least one ServiceRequest evaluated
    evaluated: int = 0  # ServiceRequests evaluated
    finding_parts: list[Path] = field(default_factory=list)
    error_parts: list[Path] = field(default_factory=list)
