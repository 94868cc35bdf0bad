"""Route records to patients: classify each resource, spill patient-keyed ones to disk shards by patient key.

Memory stays bounded whatever the input size because nothing is joined in memory until one shard (a hash
slice of the patients) is read back; the shards live in a temporary directory and are plain text lines
``key TAB type TAB file TAB line TAB entry TAB json``, so a shard can be read without parsing every resource.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from ccsvi_cds.facts.fhir import ShapeError
from ccsvi_cds.facts.records import PATIENT_KEYED_TYPES, patient_element, patient_of
from ccsvi_cds.facts.requirements import DataRequirements

from .sources import BadRecord, Record

# Who ordered: read for the report's requester and organisation names, never by the rules.
DIRECTORY_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole"})


@dataclass(frozen=True)
class Routing:
    """Which resource types go where, derived from what the rules read (facts/requirements.py)."""

    joined: frozenset[str]  # patient-keyed: spilled by patient key and joined per patient
    side: frozenset[str]  # read by reference (studies) or for the report: small side tables

    @classmethod
    def of(cls, requirements: DataRequirements) -> Routing:
        return cls(requirements.types & PATIENT_KEYED_TYPES, (requirements.types - PATIENT_KEYED_TYPES)
                   | DIRECTORY_TYPES)

    @property
    def needed(self) -> frozenset[str]:
        """What the reader must hand over in full; any other resource type is only counted."""
        return self.joined | self.side | {"Bundle"}

_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_KEY_RE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")  # also keeps tabs/newlines out of spill lines
FLUSH_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Row:
    """A patient-keyed record on its way to the join. line/entry are 0 when not applicable."""

    key: str
    rtype: str
    file_index: int
    line: int
    entry: int
    raw: bytes

    def position(self) -> tuple[int, int, int]:
        return (self.file_index, self.line, self.entry)


@dataclass(slots=True)
class SideRow:
    """A record for a side table (ResearchStudy, Organization, Practitioner, PractitionerRole)."""

    ref: str
    file_index: int
    line: int
    entry: int
    raw: bytes


Classified = Row | SideRow | BadRecord | None


def classify(rec: Record | BadRecord, routing: Routing) -> tuple[str | None, Classified]:
    """Decide what one record is for. Returns (resource type for the read counts, routed item or None).

    None as item means "counted, not needed". Invalid records become BadRecord with the reason.
    """
    if isinstance(rec, BadRecord):
        return None, rec
    res = rec.resource
    rtype: str = res["resourceType"]
    if rtype not in routing.joined and rtype not in routing.side:
        return rtype, None
    line, entry = rec.line or 0, rec.entry or 0
    rid = res.get("id")
    if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry, f"invalid resource: {rtype} without a valid id")
    raw = rec.raw if rec.raw is not None else orjson.dumps(res)
    if rtype in routing.side:
        return rtype, SideRow(f"{rtype}/{rid}", rec.file_index, line, entry, raw)
    try:
        key = patient_of(res, f"{rtype}/{rid}")
    except ShapeError as exc:
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry, f"invalid resource: {exc}")
    if key is None or not _KEY_RE.fullmatch(key):
        what = "no" if key is None else "an invalid"
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry,
                                f"invalid resource: {rtype}/{rid} has {what} {patient_element(res)} reference")
    return rtype, Row(key, rtype, rec.file_index, line, entry, raw)


def shard_of(key: str, n_shards: int) -> int:
    """Stable across processes and runs (unlike hash()), so the same input always spills the same way."""
    return zlib.crc32(key.encode()) % n_shards


def row_head(row: Row, task: int = -1) -> bytes:
    """A spilled line is ``key type file task line entry json`` + newline: this is all before the json.
    ``line`` may be relative to ``task`` (see group_shard)."""
    return f"{row.key}\t{row.rtype}\t{row.file_index}\t{task}\t{row.line}\t{row.entry}\t".encode()


class SpillWriter:
    """Buffers rows per shard and appends them to ``dir/NNNNN.<pid>`` files (one writer per process)."""

    def __init__(self, directory: Path, n_shards: int, task: int = -1) -> None:
        self.directory = directory
        self.n_shards = n_shards
        self.task = task
        self._buffers: dict[int, list[bytes]] = {}
        self._size = 0

    def add(self, row: Row) -> None:
        head = row_head(row, self.task)
        shard = shard_of(row.key, self.n_shards)
        buffer = self._buffers.get(shard)
        if buffer is None:
            buffer = self._buffers[shard] = []
        buffer += (head, row.raw, b"\n")  # joined once at flush: no copy of each line on its own
        self._size += len(head) + len(row.raw) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        pid = os.getpid()
        for shard, chunks in self._buffers.items():
            _append(self.directory / f"{shard:05d}.{pid}", b"".join(chunks))
        self._buffers.clear()
        self._size = 0


# Shard files stay open across tasks in a worker (unbuffered: each write is in the OS at once, so the
# evaluation phase sees it): a big audit has thousands of shards and tasks, and reopening every shard file
# at every task's end would cost millions of open() calls. Least recently used handles are closed first.
MAX_OPEN_SHARDS = 256
_HANDLES: OrderedDict[Path, BinaryIO] = OrderedDict()


def _append(path: Path, data: bytes) -> None:
    fh = _HANDLES.pop(path, None)
    if fh is None:
        if len(_HANDLES) >= MAX_OPEN_SHARDS:
            _HANDLES.popitem(last=False)[1].close()
        fh = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open on purpose
    _HANDLES[path] = fh
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def shard_files(directory: Path, shard: int) -> list[Path]:
    return sorted(directory.glob(f"{shard:05d}.*"))


def group_shard(data: bytes, wanted: Collection[bytes],
                offsets: Mapping[int, int] | None = None) -> Iterator[tuple[str, list[Row]]]:
    """Group a shard's spilled lines by patient, in key order, for the ``wanted`` patients only (those with
    an order some rule could match: the rest can get no finding, so they are neither parsed nor joined).
    ``offsets``: per read task, what turns its relative line numbers into the file's."""
    groups: dict[bytes, list[list[bytes]]] = {}
    for line in data.split(b"\n"):
        key, _, rest = line.partition(b"\t")
        if key in wanted:
            groups.setdefault(key, []).append(rest.split(b"\t", 5))
    shift: Mapping[int, int] = offsets or {}
    for key in sorted(groups):
        skey = key.decode()
        rows = []
        for p in groups[key]:
            line_no = int(p[3])
            if line_no:
                line_no += shift.get(int(p[2]), 0)
            rows.append(Row(skey, p[0].decode(), int(p[1]), line_no, int(p[4]), p[5]))
        yield skey, rows  # evaluate_patient orders them


def choose_shards(total_bytes: int, target: int = 16 * 1024 * 1024, maximum: int = 4096) -> int:
    return max(1, min(maximum, -(-total_bytes // target)))


def estimated_bytes(sizes: Sequence[tuple[int, bool]]) -> int:
    """Uncompressed size estimate: gzip'd FHIR NDJSON compresses roughly 8:1."""
    return sum(size * (8 if gz else 1) for size, gz in sizes)
