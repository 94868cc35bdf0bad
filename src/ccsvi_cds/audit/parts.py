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


FAN_IN = 128  # parts open at once: a huge audit can have thousands, more than the open-file limit


def _merge_round(paths: list[Path], out: Path) -> Path:
    with open(out, "wb") as fh:
        fh.writelines(k.encode() + b"\t" + v + b"\n" for k, v in heapq.merge(*(_read(p) for p in paths)))
    return out


def merge_parts(paths: Iterable[Path]) -> Iterator[bytes]:
    """The JSON lines of all parts in global key order (merged in rounds of FAN_IN files when many)."""
    todo = sorted(paths)
    generation = 0
    while len(todo) > FAN_IN:
        generation += 1
        todo = [_merge_round(todo[i:i + FAN_IN], todo[i].with_name(f"merge-{generation}-{i // FAN_IN:06d}.part"))
                for i in range(0, len(todo), FAN_IN)]
    for _, v in heapq.merge(*(_read(p) for p in todo)):
        yield v


@dataclass
class EngineResult:
    """What an engine hands back: read counts, join figures, and sorted parts for findings and errors."""

    read_counts: dict[str, int] = field(default_factory=dict)
    patients: int = 0  # patients joined: with an order some rule could match (Evaluator.screen)
    evaluated: int = 0  # ServiceRequests evaluated (screened; those of joined patients also in full)
    finding_parts: list[Path] = field(default_factory=list)
    error_parts: list[Path] = field(default_factory=list)
    records_by_file: dict[int, int] = field(default_factory=dict)  # NDJSON lines with a record, per file
