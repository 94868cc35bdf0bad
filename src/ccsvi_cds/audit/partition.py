"""Route records to patients: classify each resource, spill patient-keyed ones to disk shards by patient key.

Memory stays bounded whatever the input size because nothing is joined in memory until one shard (a hash
slice of the patients) is read back; the shards live in a temporary directory and are plain text lines
``key TAB type TAB file TAB line TAB entry TAB json``, so a shard can be read without parsing every resource.
"""

from __future__ import annotations

import os
import string
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
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

# FHIR's id, [A-Za-z0-9\-.]{1,64}, checked as `0 < len(rid) <= 64 and _ID_CHARS.issuperset(rid)`, inline in
# classify (a regex or a function call costs more, twice per record); also keeps tabs and line ends out of
# spill lines.
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-.")

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


Classified = str | SideRow | BadRecord | None


def classify(rec: Record | BadRecord, routing: Routing) -> tuple[str | None, Classified]:
    """Decide what one record is for. Returns (resource type for the read counts, routed item or None).

    A str item is the "Patient/<id>" key of a patient-keyed record (`row_of` makes its Row: the first
    reading of NDJSON needs only the key). None as item means "counted, not needed". Invalid records
    become BadRecord with the reason.
    """
    if isinstance(rec, BadRecord):
        return None, rec
    res = rec.resource
    rtype: str = res["resourceType"]
    if rtype not in routing.joined and rtype not in routing.side:
        return rtype, None
    rid = res.get("id")
    if type(rid) is not str or not (0 < len(rid) <= 64 and _ID_CHARS.issuperset(rid)):
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry, f"invalid resource: {rtype} without a valid id")
    if rtype in routing.side:
        return rtype, SideRow(f"{rtype}/{rid}", rec.file_index, rec.line or 0, rec.entry or 0, _raw(rec))
    try:
        key = patient_of(res, f"{rtype}/{rid}")
    except ShapeError as exc:
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry, f"invalid resource: {exc}")
    if key is None or not (8 < len(key) <= 72 and _ID_CHARS.issuperset(key[8:])):  # None or "Patient/<id>"
        what = "no" if key is None else "an invalid"
        return rtype, BadRecord(rec.file_index, rec.line, rec.entry,
                                f"invalid resource: {rtype}/{rid} has {what} {patient_element(res)} reference")
    return rtype, key


def row_of(rec: Record, rtype: str, key: str) -> Row:
    """The Row of a record `classify` keyed to ``key``."""
    return Row(key, rtype, rec.file_index, rec.line or 0, rec.entry or 0, _raw(rec))


def _raw(rec: Record) -> bytes:
    return rec.raw if rec.raw is not None else orjson.dumps(rec.resource)


def key_hash(key: str) -> int:
    """Stable across processes and runs (unlike hash()), so the same input always spills the same way."""
    return zlib.crc32(key.encode())


def shard_of(key: str, n_shards: int) -> int:
    return key_hash(key) % n_shards


@dataclass
class RowIndex:
    """Where one read task's patient-keyed rows are: the hash of each row's patient key, its line number and
    where its line starts (20 bytes a row, nothing of the record). The first reading keeps this instead of
    the rows; once every order has been screened, `positions_of` names the only lines to read again (a hash
    may collide: the rows read are classified again)."""

    hashes: array[int] = field(default_factory=lambda: array("I"))
    lines: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))

    def positions_of(self, hashes: frozenset[int]) -> list[tuple[int, int]]:
        """(offset, line) of each line, ascending, with a row of a patient whose key hashes to one of ``hashes``."""
        hit = list(map(hashes.__contains__, self.hashes))
        return sorted(set(zip(compress(self.offsets, hit), compress(self.lines, hit))))

    def to_bytes(self) -> bytes:
        return len(self.hashes).to_bytes(8, "little") + self.hashes.tobytes() + self.lines.tobytes() \
            + self.offsets.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RowIndex:
        n = int.from_bytes(data[:8], "little")
        index = cls()
        at = 8
        for part in (index.hashes, index.lines, index.offsets):
            end = at + n * part.itemsize
            part.frombytes(data[at:end])
            at = end
        return index


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
