"""Find and read audit inputs: FHIR Bundles, NDJSON files, Bulk Data export directories, gzip or not.

Every record carries its provenance (file index, line for NDJSON, entry index for Bundles) so a finding or
an error points back to the exact place in the auditor's files. Inputs are checked up front (`discover`) so
that a wrong path or a non-FHIR file stops the audit before any work; a bad *record* inside a good file is
never fatal (see `read_task`).

Large plain NDJSON files are split into byte-range tasks at line boundaries (`plan_tasks`) so that several
processes can read one file; gzip files and Bundles are read by one task each.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlparse

import orjson

from ccsvi_cds.facts.records import id_from_full_url, is_hook_request, request_items
from ccsvi_cds.facts.references import rewrite_references

try:  # validates JSON and reads one field without building Python objects: ~3x cheaper than a full parse
    import simdjson  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - a declared dependency; the reader works without it, slower
    simdjson = None  # type: ignore[assignment]

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
JSON_SUFFIXES = (".json",)
BUNDLE_IN_MEMORY_MAX = 64 * 1024 * 1024  # larger Bundles are streamed with ijson
CHUNK_BYTES = 8 * 1024 * 1024  # target size of one read task on a plain NDJSON file
_SNIFF_BYTES = 1024 * 1024
_BLOCK = 8 * 1024 * 1024


# Reason kinds (the text before the first colon) of a file that could not be read to its end: the audit then
# finished with records missing, and says so loudly (summary.json ``incomplete``, a non-zero exit).
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
FILE_LEVEL_KINDS = (TRUNCATED, UNREADABLE)
MAX_DEPTH = 256  # a Bundle entry nested deeper is a bad record (real FHIR resources stay below ~20 levels)


class InputError(Exception):
    """An input that cannot be audited at all (missing, unreadable, not FHIR): stops the audit up front."""


class NotFhir(InputError):
    """A file whose content is not FHIR: an error when named, skipped with a notice inside a directory."""


@dataclass(frozen=True)
class Skipped:
    """A file inside an input directory that is not FHIR (an export's own log.ndjson, a README)."""

    path: str
    reason: str


@dataclass(frozen=True)
class InputFile:
    """One file to read. ``path`` is the spelling shown in findings and errors."""

    path: str
    kind: Literal["ndjson", "json"]
    gzip: bool
    size: int
    expected: int | None = None  # resources the Bulk Data manifest says the file holds (its ``count``)


@dataclass(frozen=True)
class ReadTask:
    """A unit of reading: a whole file, or a line-aligned byte range of a plain NDJSON file."""

    file_index: int
    start: int = 0
    end: int = -1  # -1: to the end of the file
    # Line number of the task's first line; None when not known yet (``iter_cut_tasks``): lines are then
    # numbered from 1 within the task and the caller adds the task's offset once all tasks have been read.
    first_line: int | None = 1


@dataclass(slots=True)
class Record:
    """A parsed resource and where it came from. ``raw`` is the original NDJSON line (no re-serialising);
    ``offset`` where that line starts (in the decompressed stream of a gzip file), to read it again."""

    resource: dict[str, Any]
    raw: bytes | None
    file_index: int
    line: int | None
    entry: int | None
    offset: int | None = None


@dataclass(slots=True)
class BadRecord:
    """A record that could not be read; becomes one line of errors.ndjson."""

    file_index: int
    line: int | None
    entry: int | None
    reason: str


# ---------------------------------------------------------------------------------------------- discovery


def _is_gz(p: Path) -> bool:
    return p.name.lower().endswith(".gz")


def _base_name(p: Path) -> str:
    name = p.name.lower()
    return name.removesuffix(".gz")


class _GzipReader(gzip.GzipFile):
    """A gzip file whose sized reads return what is decompressed so far (like read1): on a file cut short,
    every byte before the cut reaches the reader before the EOFError, whatever the reader's block size."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read1(size) if size is not None and size > 0 else super().read(size)


def _open(path: str | Path, gz: bool) -> BinaryIO:
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    return _GzipReader(fileobj=raw, mode="rb") if gz else raw  # type: ignore[return-value]


def _head(path: Path, gz: bool, n: int = _SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes (decompressed). A gzip file cut short still has a readable head: the damage
    is then reported per record while reading, not as an unreadable input."""
    data = b""
    try:
        with _open(path, gz) as f:
            while len(data) < n and (block := f.read(min(65536, n - len(data)))):
                data += block
    except EOFError:
        if not data:
            raise InputError(f"{path}: cannot read (gzip stream ends before any data)") from None
    except (OSError, gzip.BadGzipFile) as exc:
        if not data:
            raise InputError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from exc
    return data


def _looks_like_fhir_line(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("resourceType"), str)


def _sniff_ndjson(path: Path, gz: bool) -> None:
    """Reject a non-empty NDJSON file none of whose first lines is a FHIR resource."""
    head = _head(path, gz)
    lines = [ln for ln in head.split(b"\n")[:-1] if ln.strip()][:5]
    if not lines and head.strip():  # a single (possibly huge) first line
        lines = [head]
    if not lines:
        return  # empty file: a Bulk Data export may legitimately have one
    if not any(_looks_like_fhir_line(ln) for ln in lines) and not (
        len(lines) == 1 and b'"resourceType"' in lines[0]
    ):
        raise NotFhir(f"{path}: not FHIR NDJSON (no resource with a resourceType in its first lines)")


def _sniff_json(path: Path, gz: bool) -> None:
    head = _head(path, gz).lstrip()
    if not head.startswith(b"{") or (b'"resourceType"' not in head and b'"context"' not in head):
        raise NotFhir(f"{path}: not a FHIR JSON resource or Bundle, nor a CDS Hooks request")


def _file_entry(path: Path, display: str) -> InputFile:
    gz = _is_gz(path)
    base = _base_name(path)
    if base.endswith(NDJSON_SUFFIXES):
        kind: Literal["ndjson", "json"] = "ndjson"
    elif base.endswith(JSON_SUFFIXES):
        kind = "json"
    else:  # explicitly named file with another suffix: decide by content
        head = _head(path, gz, 64 * 1024)
        first = head.split(b"\n", 1)[0]
        kind = "ndjson" if _looks_like_fhir_line(first) and b"\n{" in head else "json"
    if kind == "ndjson":
        _sniff_ndjson(path, gz)
    else:
        _sniff_json(path, gz)
    return InputFile(display, kind, gz, path.stat().st_size)


def _manifest_count(item: dict[str, Any]) -> int | None:
    count = item.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def _from_manifest(directory: Path, display: str) -> list[InputFile]:
    """Files listed in a Bulk Data manifest.json (``output`` entries), resolved inside ``directory``."""
    mpath = directory / "manifest.json"
    try:
        manifest = orjson.loads(mpath.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"{mpath}: unreadable Bulk Data manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
        raise InputError(f"{mpath}: not a Bulk Data manifest (no 'output' list)")
    files: list[InputFile] = []
    for item in manifest["output"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise InputError(f"{mpath}: manifest output entry without a url")
        url = item["url"]
        rel = urlparse(url).path if "://" in url else url
        candidates = [directory / rel.lstrip("/"), directory / Path(rel).name]
        root = directory.resolve()  # a manifest names files of its own export, never outside it
        local = next((c for c in candidates if c.is_file() and c.resolve().is_relative_to(root)), None)
        if local is None:
            raise InputError(f"{mpath}: lists {Path(rel).name}, which is not in {display}")
        shown = os.path.join(display, os.path.relpath(local, directory))
        entry = _file_entry(local, shown)
        files.append(dataclasses.replace(entry, kind="ndjson", expected=_manifest_count(item)))
    return files


def _walk(directory: Path, display: str, skipped: list[Skipped]) -> list[InputFile]:
    """A directory's FHIR files; every other (non-hidden) file is added to ``skipped`` with the reason."""
    if (directory / "manifest.json").is_file():
        return _from_manifest(directory, display)
    out: list[InputFile] = []
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        shown = os.path.join(display, child.name)
        if child.is_dir():
            out.extend(_walk(child, shown, skipped))
        elif not child.is_file():
            continue
        elif not _base_name(child).endswith(NDJSON_SUFFIXES + JSON_SUFFIXES):
            skipped.append(Skipped(shown, "not a .json or .ndjson file (gzip or not)"))
        else:
            try:
                out.append(_file_entry(child, shown))
            except NotFhir as exc:
                skipped.append(Skipped(shown, str(exc).removeprefix(f"{child}: ")))
    return out


def discover(inputs: Sequence[str], skipped: list[Skipped] | None = None) -> list[InputFile]:
    """Expand INPUT arguments into the files to read, in a deterministic order; raise InputError early.

    Files inside a directory that are not FHIR are skipped (and listed in ``skipped``); a file named
    explicitly that is not FHIR is an error."""
    if not inputs:
        raise InputError("no input given")
    files: list[InputFile] = []
    if skipped is None:
        skipped = []
    for arg in inputs:
        p = Path(arg)
        if not p.exists():
            raise InputError(f"{arg}: no such file or directory")
        if p.is_dir():
            found = _walk(p, arg.rstrip("/") or "/", skipped)
            if not found:
                raise InputError(f"{arg}: no FHIR files (*.json, *.ndjson, gzip or not, or a manifest.json)")
            files.extend(found)
        elif p.is_file():
            if not os.access(p, os.R_OK):
                raise InputError(f"{arg}: not readable")
            files.append(_file_entry(p, arg))
        else:
            raise InputError(f"{arg}: not a regular file or directory")
    seen: set[str] = set()
    unique = []
    for f in files:  # the same file named twice would double every finding
        real = os.path.realpath(f.path)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    return unique


# ---------------------------------------------------------------------------------------------- planning


def plan_tasks(files: Sequence[InputFile], chunk_bytes: int | None = None) -> list[ReadTask]:
    """Read tasks: plain NDJSON files are cut into ~``chunk_bytes`` tasks at newline boundaries, with the
    line number each task starts at, so that parallel readers still report true line numbers."""
    return list(iter_tasks(files, chunk_bytes))


def iter_tasks(files: Sequence[InputFile], chunk_bytes: int | None = None) -> Iterator[ReadTask]:
    """``plan_tasks`` lazily, file by file, so that workers start on the first tasks during the scan."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    for idx, f in enumerate(files):
        splittable = f.kind == "ndjson" and not f.gzip and f.size > chunk_bytes
        start, first_line, lines_before, offset = 0, 1, 0, 0
        next_cut = chunk_bytes
        if not splittable:
            yield ReadTask(idx, 0, -1, 1)
            continue
        with open(f.path, "rb") as fh:
            while block := fh.read(_BLOCK):
                while next_cut < offset + len(block):
                    nl = block.find(b"\n", next_cut - offset)
                    if nl < 0:
                        break
                    cut = offset + nl + 1
                    yield ReadTask(idx, start, cut, first_line)
                    first_line = lines_before + block.count(b"\n", 0, nl + 1) + 1
                    start = cut
                    next_cut = cut + chunk_bytes
                lines_before += block.count(b"\n")
                offset += len(block)
        yield ReadTask(idx, start, -1, first_line)


def iter_cut_tasks(files: Sequence[InputFile], chunk_bytes: int | None = None) -> Iterator[ReadTask]:
    """Like ``iter_tasks`` without reading the files: each cut is found by seeking ~``chunk_bytes`` on and
    reading to the next newline. Line numbers are then relative to each task (``first_line`` None): each
    task reports how many lines it read, and absolute numbers follow from those counts."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    for idx, f in enumerate(files):
        if f.kind != "ndjson" or f.gzip or f.size <= chunk_bytes:
            yield ReadTask(idx, 0, -1, 1)
            continue
        start = 0
        with open(f.path, "rb") as fh:
            while start + chunk_bytes < f.size:
                pos = start + chunk_bytes
                fh.seek(pos)
                cut = -1
                while block := fh.read(1 << 16):
                    nl = block.find(b"\n")
                    if nl >= 0:
                        cut = pos + nl + 1
                        break
                    pos += len(block)
                if cut < 0 or cut >= f.size:
                    break
                yield ReadTask(idx, start, cut, None)
                start = cut
        yield ReadTask(idx, start, -1, None if start else 1)


def line_offsets(tasks: Sequence[tuple[int, ReadTask, int]]) -> dict[int, int]:
    """Per task index, what to add to its relative line numbers: the lines of the earlier tasks of the same
    file. ``tasks``: (task index, task, lines the task read)."""
    offsets: dict[int, int] = {}
    seen: dict[int, int] = {}
    for index, task, lines in sorted(tasks, key=lambda t: (t[1].file_index, t[1].start)):
        if task.first_line is None:
            offsets[index] = seen.get(task.file_index, 0)
        else:
            offsets[index] = 0
        seen[task.file_index] = seen.get(task.file_index, 0) + lines
    return offsets


# ---------------------------------------------------------------------------------------------- reading


def read_task(files: Sequence[InputFile], task: ReadTask, keep: frozenset[str] | None = None,
              counted: dict[str, int] | None = None,
              meta: dict[str, int] | None = None) -> Iterator[Record | BadRecord]:
    """Yield every record of a task, and a BadRecord for each line/entry that is not a FHIR resource.

    NDJSON resources of a type not in ``keep`` are only counted (into ``counted``): skipping the Record
    keeps the ~80% of an export the rules never read cheap.
    """
    f = files[task.file_index]
    if f.kind == "ndjson":  # the reader itself, not a generator around it: one less hop per record
        return _read_ndjson(f, task, keep, counted, meta)
    return _read_json(f, task.file_index)


def _iter_lines(f: InputFile, task: ReadTask, unterminated: list[bool]) -> Iterator[bytes]:
    """The task's lines; a last line without a line end sets ``unterminated`` before it is yielded."""
    for block in _iter_blocks(f, task):
        if block[-1:] == b"\n":
            lines = block.split(b"\n")
            lines.pop()  # the empty string after the block's last line end
            yield from lines
        else:  # the file's last line, without a line end
            unterminated.append(True)
            yield block


def _bad_json(exc: Exception) -> str:
    text = str(exc)
    if "depth" in text.lower():  # simdjson's DEPTH_ERROR, orjson's "depth limit exceeded": ~1,024 levels
        return "malformed JSON: nested too deeply (more than 1,024 levels)"
    return f"malformed JSON: {text.partition(' This is a fatal')[0].rstrip()}"  # simdjson's words: skipped


def _ends_early(exc: BaseException) -> bool:
    return isinstance(exc, EOFError) or "premature EOF" in str(exc)  # gzip cut short; yajl's JSON cut short


def _stopped(exc: BaseException, where: str) -> str:
    """The reason for a file that could not be read to its end (a file-level kind, see FILE_LEVEL_KINDS).
    Only the first line of the parser's message: yajl adds a snippet of the data."""
    text = (str(exc).splitlines() or [""])[0].strip() or "compressed stream cut short"
    if _ends_early(exc):
        return (f"{TRUNCATED}: the file ends early ({text}) {where}; "
                "the records after it are missing (file unreadable from here on)")
    return f"{UNREADABLE}: {exc.__class__.__name__}: {text} {where}; file unreadable from here on"


def _read_ndjson(f: InputFile, task: ReadTask, keep: frozenset[str] | None,
                 counted: dict[str, int] | None,
                 meta: dict[str, int] | None = None) -> Iterator[Record | BadRecord]:
    """The hot loop of the audit: every line is checked (so malformed lines are always reported), but a
    resource whose type is not in ``keep`` is only counted. When types are filtered, simdjson checks each
    line and reads its resourceType without building objects; only the resources kept are parsed with orjson."""
    idx = task.file_index
    first = line_no = (task.first_line or 1) - 1
    blank = 0
    lazy = keep is not None and counted is not None and simdjson is not None
    parser = simdjson.Parser() if lazy else None
    Obj = simdjson.Object if lazy else dict
    loads = orjson.loads
    # Whether the last resource was one to keep: Bulk Data files hold one type each, so the next one most
    # likely is too, and is then parsed once (orjson) rather than checked first (simdjson) and parsed again.
    kept = False  # stays False without simdjson (then every line is parsed with orjson anyway)
    pos = 0 if f.gzip else task.start  # where the next line starts
    try:
        unterminated: list[bool] = []
        for line in _iter_lines(f, task, unterminated):
            line_no += 1
            at = pos
            pos += len(line) + 1
            try:
                doc = obj = None
                if kept:
                    try:
                        doc = obj = loads(line)
                    except ValueError:
                        pass  # read again below: a bad line gets the same reason whatever line came before it
                if doc is None:
                    if parser is not None:
                        doc = parser.parse(line)
                    else:
                        doc = obj = loads(line)
            # orjson's JSONDecodeError is a ValueError; simdjson raises RuntimeError (e.g. DEPTH_ERROR)
            except (ValueError, UnicodeDecodeError, RuntimeError) as exc:
                if not line.strip():
                    blank += 1
                    continue  # blank line
                if unterminated:  # an invalid last line without a line end: the file was cut short
                    yield BadRecord(idx, line_no, None, f"{TRUNCATED}: the last line is cut short (no line end, "
                                                        "not valid JSON); the file ends early")
                    continue
                yield BadRecord(idx, line_no, None, _bad_json(exc))
                continue
            rtype = doc.get("resourceType") if type(doc) is Obj or type(doc) is dict else None
            del doc  # simdjson: the parser can only be reused once its document is released
            if type(rtype) is str and keep is not None and rtype not in keep:
                kept = False
                if counted is not None:
                    counted[rtype] = counted.get(rtype, 0) + 1
                continue
            kept = parser is not None
            if not isinstance(rtype, str):
                yield BadRecord(idx, line_no, None, "not a FHIR resource (no resourceType)")
                continue
            if obj is None:
                try:
                    obj = loads(line)
                except ValueError as exc:  # within simdjson's depth limit, beyond orjson's
                    yield BadRecord(idx, line_no, None, _bad_json(exc))
                    continue
            if rtype == "Bundle":  # a Bundle on one NDJSON line: read its entries
                for rec in _bundle_records(obj, idx, line_no):
                    if type(rec) is Record:
                        rec.offset = at
                    yield rec
                continue
            if line[-1:].isspace():
                line = line.strip()
            yield Record(obj, line, idx, line_no, None, at)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip: keep what was read
        yield BadRecord(idx, line_no + 1, None, _stopped(exc, f"at line {line_no + 1}"))
    if meta is not None:
        meta["lines"] = line_no - first
        meta["records"] = line_no - first - blank


# ---------------------------------------------------------------------------------------------- gathering

def read_at(files: Sequence[InputFile], task: ReadTask, positions: Iterable[tuple[int, int]]) -> Iterator[Record]:
    """The records on the lines at the given (offset, line number) positions of an NDJSON task, ascending (from
    the first reading's `Record.offset` and `line`): the second reading of the audit reads those lines and no
    other (a gzip file is decompressed up to each, without splitting what lies between). What cannot be read
    is skipped without a word: the first reading reported it."""
    f = files[task.file_index]
    try:
        with _open(f.path, f.gzip) as fh:
            for offset, line_no in positions:
                fh.seek(offset)
                line = fh.readline()
                yield from _line_records(line[:-1] if line[-1:] == b"\n" else line, task.file_index, line_no,
                                         offset)
    except (OSError, EOFError, zlib.error):
        return  # reported by the first reading, which did not read past the fault either


def _line_records(line: bytes, idx: int, line_no: int, offset: int) -> Iterator[Record]:
    """One NDJSON line's records, read as ``_read_ndjson`` reads them (bad ones were reported there)."""
    try:
        obj = orjson.loads(line)
    except ValueError:
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        return
    if obj["resourceType"] == "Bundle":
        for rec in _bundle_records(obj, idx, line_no):
            if type(rec) is Record:
                rec.offset = offset
                yield rec
        return
    yield Record(obj, line.strip() if line[-1:].isspace() else line, idx, line_no, None, offset)


def _iter_blocks(f: InputFile, task: ReadTask) -> Iterator[bytes]:
    """The task's bytes in blocks of whole lines, then the file's last line if it lacks its line end. A gzip
    file is read in small steps: if it is cut short, everything up to the cut is still returned, the partial
    last line is dropped and the error (EOFError, zlib.error) raised to the caller, who reports it."""
    step = 1 << 16 if f.gzip else _BLOCK
    with _open(f.path, f.gzip) as fh:
        remaining = None
        if not f.gzip:
            fh.seek(task.start)
            remaining = (task.end - task.start) if task.end >= 0 else None
        rest = b""
        while remaining is None or remaining > 0:
            block = fh.read(step if remaining is None else min(step, remaining))
            if not block:
                break
            if remaining is not None:
                remaining -= len(block)
            block = rest + block if rest else block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if cut:
                yield block[:cut]
        if rest:
            yield rest


def _too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``obj`` nests deeper than ``limit`` (iterative: a deep entry must not exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def _entry_identity(entry: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    res = entry.get("resource")
    full = entry.get("fullUrl")
    if not isinstance(res, dict):
        return (full if isinstance(full, str) else None), None
    if not res.get("id") and (rid := id_from_full_url(full)):
        res["id"] = rid
    return (full if isinstance(full, str) else None), res


def _full_url_map(entries: Sequence[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in entries:
        if isinstance(e, dict):
            full, res = _entry_identity(e)
            if full and res and isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
                out[full] = f"{res['resourceType']}/{res['id']}"
    return out


def _bundle_records(bundle: dict[str, Any], idx: int, line: int | None,
                    first_entry: int = 1) -> Iterator[Record | BadRecord]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        yield BadRecord(idx, line, None, "Bundle.entry is not a list")
        return
    urls = _full_url_map(entries)
    for n, e in enumerate(entries, start=first_entry):
        yield from _entry_record(e, urls, idx, line, n)


def _entry_record(
    e: Any, urls: dict[str, str], idx: int, line: int | None, n: int
) -> Iterator[Record | BadRecord]:
    if not isinstance(e, dict):
        yield BadRecord(idx, line, n, "Bundle entry is not an object")
        return
    if _too_deep(e):
        yield BadRecord(idx, line, n, f"malformed JSON: Bundle entry nested too deeply (more than {MAX_DEPTH} levels)")
        return
    _, res = _entry_identity(e)
    if res is None or not isinstance(res.get("resourceType"), str):
        if e.get("request") and not e.get("resource"):
            return  # e.g. a DELETE in a transaction: nothing to audit
        yield BadRecord(idx, line, n, "Bundle entry without a FHIR resource")
        return
    if res["resourceType"] == "Bundle":
        for inner in _bundle_records(res, idx, line):
            if isinstance(inner, Record):
                yield Record(inner.resource, None, idx, line, n)
            else:
                yield BadRecord(idx, line, n, inner.reason)
        return
    if urls:
        rewrite_references(res, urls)
    yield Record(res, None, idx, line, n)


def _hook_request_records(request: dict[str, Any], idx: int) -> Iterator[Record | BadRecord]:
    """A CDS Hooks request file: its draft orders and prefetch resources, as the core reads them (every
    draft order is audited, as order-sign judges them). Entries are numbered on through the request."""
    located = request_items(request)
    n = 1
    for item in located:
        if item.resource.get("resourceType") == "Bundle":
            entries = item.resource.get("entry")
            yield from _bundle_records(item.resource, idx, None, n)
            n += len(entries) if isinstance(entries, list) else 0
        else:
            yield from _entry_record({"resource": item.resource}, {}, idx, None, n)
            n += 1


def _document_records(obj: Any, idx: int) -> Iterator[Record | BadRecord]:
    if is_hook_request(obj):
        yield from _hook_request_records(obj, idx)
    elif not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        yield BadRecord(idx, None, None, "not a FHIR resource (no resourceType) nor a CDS Hooks request")
    elif obj["resourceType"] == "Bundle":
        yield from _bundle_records(obj, idx, None)
    elif _too_deep(obj):
        yield BadRecord(idx, None, None, f"malformed JSON: nested too deeply (more than {MAX_DEPTH} levels)")
    else:
        yield Record(obj, None, idx, None, None)


def _small_document(f: InputFile) -> bytearray | None:
    """The whole (decompressed) document when it is at most BUNDLE_IN_MEMORY_MAX bytes, else None: the
    limit applies to the decompressed bytes, so a small gzip file that inflates to gigabytes is streamed.
    Read in blocks into one buffer: memory stays at the limit, not a multiple of it."""
    limit = BUNDLE_IN_MEMORY_MAX
    data = bytearray()
    with _open(f.path, f.gzip) as fh:
        while len(data) <= limit and (block := fh.read(min(1 << 20, limit + 1 - len(data)))):
            data += block
    return data if len(data) <= limit else None


def _read_json(f: InputFile, idx: int) -> Iterator[Record | BadRecord]:
    """A JSON document: parsed whole when small; streamed entry by entry when large, when it cannot be
    parsed whole (cut short, or one entry nested too deeply), so that every readable entry is kept."""
    data: bytearray | None = None
    if f.gzip or f.size <= BUNDLE_IN_MEMORY_MAX:
        try:
            data = _small_document(f)
        except (OSError, EOFError, zlib.error):  # a gzip file cut short or corrupt: the stream reports it
            data = None
    if data is not None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        del data
        if obj is not None:
            yield from _document_records(obj, idx)
            return
    yield from _stream_bundle(f, idx)


def _stream_bundle(f: InputFile, idx: int) -> Iterator[Record | BadRecord]:
    """A Bundle too large to hold, or that cannot be parsed whole: two ijson passes (fullUrl map, then
    entries), memory ~ one entry. What precedes a fault is kept; the fault is reported with its kind."""
    import ijson  # type: ignore[import-untyped]  # only needed for large or damaged Bundles

    errors = (ijson.JSONError, OSError, EOFError, zlib.error, UnicodeDecodeError)
    urls: dict[str, str] = {}
    top: str | None = None
    try:
        with _open(f.path, f.gzip) as fh:
            full: str | None = None
            rtype: str | None = None
            rid: str | None = None
            for prefix, event, value in ijson.parse(fh):
                if prefix == "resourceType":
                    top = value
                elif prefix == "entry.item" and event == "start_map":
                    full = rtype = rid = None
                elif prefix == "entry.item.fullUrl":
                    full = value
                elif prefix == "entry.item.resource.resourceType":
                    rtype = value
                elif prefix == "entry.item.resource.id":
                    rid = value
                elif prefix == "entry.item" and event == "end_map" and full and rtype:
                    if rid is None:
                        rid = id_from_full_url(full)
                    if rid:
                        urls[full] = f"{rtype}/{rid}"
    except errors:
        pass  # reported by the second pass, which stops at the same place
    n = 0
    try:
        with _open(f.path, f.gzip) as fh:
            for n, e in enumerate(ijson.items(fh, "entry.item", use_float=True), start=1):
                yield from _entry_record(e, urls, idx, None, n)
    except errors as exc:
        if top != "Bundle" and n == 0 and not _ends_early(exc) and isinstance(exc, ijson.JSONError):
            text = (str(exc).splitlines() or [""])[0]
            yield BadRecord(idx, None, None, f"malformed JSON: {text}")  # one document, one bad record
            return
        yield BadRecord(idx, None, n + 1 if n else None,
                        _stopped(exc, f"after entry {n}" if n else "before the first entry"))
        return
    if top != "Bundle" and n == 0:
        what = f"a {top}" if top else "this document"
        yield BadRecord(idx, None, None, f"{UNREADABLE}: {what} of {f.size:,} bytes is too large to read "
                                         "whole (only Bundles are streamed) or is not valid JSON")
