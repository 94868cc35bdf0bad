"""The default engine: a process pool on this machine, memory bounded by spilling to disk by patient key.

Phase 1 (read): each task parses a slice of the input, screens every ServiceRequest against the rules
(`Evaluator.screen`) and returns side-table rows, read counts, the patients with an order some rule could
match and where its patient-keyed rows are (`RowIndex`; a Bundle file's rows are spilled at once). Phase 1b
(gather): the NDJSON lines that hold those patients' rows are read again and their rows appended to hash
shards on disk (one file per shard per worker). Phase 2 (evaluate): each task reads one shard back and joins
and evaluates only those patients: in a referral export almost every patient has routine orders, and none
of them can fire a rule. The rule engine is not thread-safe and not picklable, so each worker process builds
its own Evaluator on first use; the parent never builds one.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ccsvi_cds.evaluate import OrderScreen
from ccsvi_cds.facts.fhir import Resource
from ccsvi_cds.facts.requirements import data_requirements
from ccsvi_cds.rulepack import load_pack

from .evaluator import build_evaluator
from .join import SideTables, build_side_tables, error_line, evaluate_patient_or_report
from .partition import (
    Routing,
    Row,
    RowIndex,
    SideRow,
    SpillWriter,
    choose_shards,
    classify,
    estimated_bytes,
    group_shard,
    key_hash,
    row_of,
    shard_files,
)
from .parts import EngineResult, write_part
from .sources import BadRecord, InputFile, ReadTask, Record, line_offsets, read_at, read_task

if TYPE_CHECKING:
    from ccsvi_cds.evaluate import Evaluator
    from ccsvi_cds.rulepack import RulePack


@dataclass(frozen=True)
class _Config:
    files: tuple[InputFile, ...]
    rules_dir: str
    digest: str | None
    base_url: str | None
    validate: bool
    spill_dir: Path
    parts_dir: Path
    n_shards: int
    routing: Routing
    parent_pid: int


_CFG: _Config | None = None
_EVALUATOR: Evaluator | None = None
_SIDE: SideTables | None = None
_OFFSETS: dict[int, int] | None = None
_WANTED: Wanted | None = None  # the patients to join (phases 1b and 2), from every read task's screening
_PARENT_PACK: RulePack | None = None  # the RulePack the parent loaded; workers inherit it through fork


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive an audit killed with SIGKILL: it would wait for work forever, holding the
    spill directory's lock (so no later audit could remove the clinical data in it). On Linux the kernel
    kills the worker when the audit dies (PR_SET_PDEATHSIG); elsewhere a watcher thread ends it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    else:  # pragma: no cover - macOS and others
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the audit died before the line above
        os._exit(1)


def _init(cfg: _Config) -> None:
    global _CFG, _EVALUATOR, _SIDE, _OFFSETS, _WANTED
    _die_with_parent(cfg.parent_pid)
    _CFG, _EVALUATOR, _SIDE, _OFFSETS = cfg, None, None, None
    _WANTED = None


def worker_evaluator(cfg: _Config) -> Evaluator:
    """Build this process's Evaluator once (never in a parent before a fork: the engine handle is local)."""
    global _EVALUATOR
    if _EVALUATOR is None:
        _EVALUATOR = build_evaluator(cfg.rules_dir, cfg.digest, cfg.base_url, _PARENT_PACK, cfg.validate)
    return _EVALUATOR


@dataclass
class SpillResult:
    task_index: int
    task: ReadTask
    bytes_read: int
    lines: int  # lines the task read (to number the lines of the tasks after it in the file)
    records: int  # non-blank lines (NDJSON), to compare with a Bulk Data manifest's count
    counts: Counter[str]
    side: list[SideRow]
    bad: Path | None  # records reported and skipped, line numbers relative to the task
    orders: int  # ServiceRequests evaluated (screened)
    wanted: set[str]  # patients with an order some rule could match: the only ones joined
    index: Path | None  # where an NDJSON task's rows are (RowIndex): read again only for the joined patients


@dataclass
class Routed:
    """What reading one task gave, besides the rows: read counts per type, side-table rows, bad records,
    lines read (to number the lines of later tasks), non-blank lines (to check a manifest's count), the
    ServiceRequests evaluated (screened), the patients with an order some rule could match, and where the
    task's rows are."""

    counts: Counter[str]
    side: list[SideRow]
    bad: list[BadRecord]
    lines: int
    records: int
    orders: int
    wanted: set[str]
    index: RowIndex


def read_and_route(files: Sequence[InputFile], task: ReadTask, routing: Routing,
                   on_row: Callable[[Row], None] | None, screen: Callable[[Resource], OrderScreen] | None) -> Routed:
    """Read one task, classify every record; rows go into the index and to ``on_row``; with ``screen``, each
    ServiceRequest is screened (the rule-derived pushdown: only the patients in ``wanted`` are joined). Shared
    by both engines."""
    counts: dict[str, int] = {}
    side: list[SideRow] = []
    bad: list[BadRecord] = []
    counted: dict[str, int] = {}
    meta: dict[str, int] = {}
    wanted: set[str] = set()
    index = RowIndex()
    add_hash, add_line, add_offset = index.hashes.append, index.lines.append, index.offsets.append  # hot: bound once
    orders = 0
    not_evaluated, candidate = OrderScreen.NOT_EVALUATED, OrderScreen.CANDIDATE
    for rec in read_task(files, task, routing.needed, counted, meta):  # the audit's hot loop
        rtype, item = classify(rec, routing)
        if rtype is not None:
            counts[rtype] = counts.get(rtype, 0) + 1
        if type(item) is str:  # the patient key of a row
            record: Record = rec  # type: ignore[assignment]  # classify keys Records only
            if screen is not None and rtype == "ServiceRequest":
                verdict = screen(record.resource)
                orders += verdict is not not_evaluated
                if verdict is candidate:
                    wanted.add(item)
            add_hash(key_hash(item))
            add_line(record.line or 0)
            add_offset(record.offset or 0)
            if on_row is not None:
                on_row(row_of(record, rtype or "", item))
        elif type(item) is SideRow:
            side.append(item)
        elif type(item) is BadRecord:
            bad.append(item)
    for rtype, n in counted.items():
        counts[rtype] = counts.get(rtype, 0) + n
    return Routed(Counter(counts), side, bad, meta.get("lines", 0), meta.get("records", 0), orders, wanted,
                  index)


def gather(files: Sequence[InputFile], task: ReadTask, routing: Routing, wanted: frozenset[str],
           positions: Sequence[tuple[int, int]] | None, on_row: Callable[[Row], None]) -> None:
    """Read one task again for the rows of the patients to join (``wanted``): in NDJSON only the lines at
    the ``positions`` the first reading's index names (`RowIndex.positions_of`); None reads a Bundle file in
    full. Each record is classified by the same code as in the first reading, so a row is its patient's or
    is not kept. Shared by both engines."""
    records = read_task(files, task, routing.needed) if positions is None else read_at(files, task, positions)
    for rec in records:
        rtype, item = classify(rec, routing)
        if type(item) is str and item in wanted:
            assert type(rec) is Record and rtype is not None
            on_row(row_of(rec, rtype, item))


def _read(task_index: int, task: ReadTask) -> SpillResult:
    """Phase 1 for one task. Rows of NDJSON tasks are not kept (phase 1b gathers the few needed); a Bundle
    file's are spilled now, as reading it again would mean parsing it all again."""
    assert _CFG is not None
    writer = SpillWriter(_CFG.spill_dir, _CFG.n_shards, task_index)
    keep = _CFG.files[task.file_index].kind == "json"
    routed = read_and_route(_CFG.files, task, _CFG.routing, writer.add if keep else None,
                            worker_evaluator(_CFG).screen)
    counts, side, bad, lines = routed.counts, routed.side, routed.bad, routed.lines
    writer.flush()
    f = _CFG.files[task.file_index]
    size = (task.end if task.end >= 0 else f.size) - task.start
    index = None
    if not keep and routed.index.hashes:
        index = _CFG.spill_dir / f"index-{task_index:06d}"
        index.write_bytes(routed.index.to_bytes())
    path = None
    if bad:  # numbered once every task's line count is known (run_embedded)
        path = _CFG.parts_dir / f"read-{task_index:06d}.bad"
        path.write_bytes(b"".join(orjson.dumps([b.file_index, b.line, b.entry, b.reason]) + b"\n" for b in bad))
    return SpillResult(task_index, task, size, lines, routed.records, counts, side, path, routed.orders,
                       routed.wanted, index)


@dataclass(frozen=True)
class Wanted:
    """The patients to join, in the spellings each phase looks them up by."""

    keys: frozenset[str]  # "Patient/<id>" (gather: a classified row's key)
    raw_keys: frozenset[bytes]  # the same as bytes (phase 2: a spilled line's first field)
    hashes: frozenset[int]  # their key_hash (gather: what a RowIndex holds)


def _wanted(cfg: _Config) -> Wanted:
    """This worker's copy of the parent's wanted.txt, read once."""
    global _WANTED
    if _WANTED is None:
        keys = frozenset((cfg.spill_dir / "wanted.txt").read_text().split())
        _WANTED = Wanted(keys, frozenset(k.encode() for k in keys), frozenset(key_hash(k) for k in keys))
    return _WANTED


def _gather(task_index: int, task: ReadTask, index: Path) -> None:
    """Phase 1b for one NDJSON task: spill the rows of the patients to join, from the lines its index names."""
    assert _CFG is not None
    wanted = _wanted(_CFG)
    positions = RowIndex.from_bytes(index.read_bytes()).positions_of(wanted.hashes)
    index.unlink()
    if positions:
        writer = SpillWriter(_CFG.spill_dir, _CFG.n_shards, task_index)
        gather(_CFG.files, task, _CFG.routing, wanted.keys, positions, writer.add)
        writer.flush()


def _number_bad_records(bad: Path, offset: int, paths: Sequence[str], out: Path) -> Path | None:
    """Turn a task's bad records (relative line numbers) into an errors part with the file's line numbers."""
    lines = []
    for raw in bad.read_bytes().splitlines():
        fi, line, entry, reason = orjson.loads(raw)
        line = line + offset if line else line
        lines.append(error_line(paths[fi], fi, line, entry, reason))
    bad.unlink()
    return write_part(out, lines)


@dataclass
class ShardResult:
    shard: int
    evaluated_correction: int  # see PatientResult
    findings: Path | None
    errors: Path | None


def _evaluate_shard(shard: int) -> ShardResult:
    global _SIDE, _OFFSETS
    assert _CFG is not None
    if _SIDE is None:
        _SIDE = SideTables.from_json((_CFG.spill_dir / "side.json").read_bytes())
    if _OFFSETS is None:
        _OFFSETS = {int(k): v for k, v in orjson.loads((_CFG.spill_dir / "lines.json").read_bytes()).items()}
    ev = worker_evaluator(_CFG)
    paths = [f.path for f in _CFG.files]
    data = b"".join(p.read_bytes() for p in shard_files(_CFG.spill_dir, shard))
    findings: list[tuple[str, bytes]] = []
    errors: list[tuple[str, bytes]] = []
    correction = 0
    for key, rows in group_shard(data, _wanted(_CFG).raw_keys, _OFFSETS):
        res = evaluate_patient_or_report(key, rows, _SIDE, ev, paths)
        findings += res.findings
        errors += res.errors
        correction += res.evaluated_correction
    del data
    return ShardResult(
        shard, correction,
        write_part(_CFG.parts_dir / f"shard-{shard:05d}.findings", findings),
        write_part(_CFG.parts_dir / f"shard-{shard:05d}.errors", errors),
    )


Progress = Callable[[str, int, int, int], None]  # (phase, advance, total, resources read)


def _drain(pool: ProcessPoolExecutor, jobs: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]],
           on_done: Callable[[Any], None], window: int) -> None:
    """Run jobs with at most ``window`` in flight (bounded memory for results), in completion order."""
    pending: set[Future[Any]] = set()
    it = iter(jobs)
    for fn, args in it:
        pending.add(pool.submit(fn, *args))
        if len(pending) >= window:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for d in done:
                on_done(d.result())
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for d in done:
            on_done(d.result())


def run_embedded(files: Sequence[InputFile], tasks: Iterable[ReadTask], rules_dir: Path, workdir: Path,
                 workers: int | None = None, progress: Progress | None = None,
                 base_url: str | None = None, digest: str | None = None, pack: RulePack | None = None,
                 on_started: Callable[[], None] | None = None, validate: bool = False) -> EngineResult:
    """Run the audit on a local process pool; returns counts and sorted part files under ``workdir``.

    ``pack``: the RulePack the caller loaded (and whose digest it reports), shared with the forked workers.
    """
    global _PARENT_PACK
    _PARENT_PACK = pack
    workers = workers or os.cpu_count() or 1
    spill_dir, parts_dir = workdir / "spill", workdir / "parts"
    spill_dir.mkdir(parents=True, exist_ok=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    n_shards = choose_shards(estimated_bytes([(f.size, f.gzip) for f in files]))
    cfg = _Config(tuple(files), str(rules_dir), digest, base_url, validate, spill_dir, parts_dir, n_shards,
                  Routing.of(data_requirements(pack if pack is not None else load_pack(rules_dir))), os.getpid())
    result = EngineResult()
    counts: Counter[str] = Counter()
    side_rows: list[tuple[int, SideRow]] = []
    read: list[tuple[int, ReadTask, int]] = []
    bad_files: list[tuple[int, Path]] = []
    wanted: set[str] = set()
    indexes: dict[int, Path] = {}  # NDJSON tasks with rows: where they are (RowIndex files)
    tick = progress or (lambda phase, adv, total, resources: None)
    total_bytes = sum(f.size for f in files)
    paths = [f.path for f in files]

    def spilled(r: SpillResult) -> None:
        counts.update(r.counts)
        side_rows.extend((r.task_index, s) for s in r.side)
        read.append((r.task_index, r.task, r.lines))
        result.records_by_file[r.task.file_index] = result.records_by_file.get(r.task.file_index, 0) + r.records
        if r.bad:
            bad_files.append((r.task_index, r.bad))
        result.evaluated += r.orders
        wanted.update(r.wanted)
        if r.index is not None:
            indexes[r.task_index] = r.index
        tick("read", r.bytes_read, total_bytes, sum(r.counts.values()))

    def evaluated(r: ShardResult) -> None:
        result.evaluated += r.evaluated_correction
        if r.findings:
            result.finding_parts.append(r.findings)
        if r.errors:
            result.error_parts.append(r.errors)
        tick("evaluate", 1, n_shards, 0)

    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(cfg,)) as pool:
        # Tasks may be planned lazily: workers start on the first file while the rest is still scanned.
        pool.submit(int).result()  # workers are forked now, before the caller's threads start
        if on_started is not None:
            on_started()
        _drain(pool, ((_read, (i, t)) for i, t in enumerate(tasks)), spilled, workers * 4)
        # Every task's line count is known now: relative line numbers become the files' line numbers.
        offsets = line_offsets(read)
        (spill_dir / "lines.json").write_bytes(orjson.dumps({str(k): v for k, v in offsets.items()}))
        for task_index, s in side_rows:
            if s.line:
                s.line += offsets[task_index]
        (spill_dir / "side.json").write_bytes(build_side_tables(s for _, s in side_rows).to_json())
        (spill_dir / "wanted.txt").write_bytes("\n".join(sorted(wanted)).encode())
        result.patients = len(wanted)
        if wanted:  # phase 1b: the rows of the patients to join, from the NDJSON lines that hold them
            again = [(_gather, (i, t, indexes[i])) for i, t, _ in sorted(read, key=lambda r: r[0]) if i in indexes]
            _drain(pool, again, lambda _: tick("gather", 1, len(again), 0), workers * 4)
        del side_rows[:]
        for task_index, bad in bad_files:
            part = _number_bad_records(bad, offsets[task_index], paths, parts_dir / f"read-{task_index:06d}.errors")
            if part:
                result.error_parts.append(part)
        _drain(pool, [(_evaluate_shard, (s,)) for s in range(n_shards)], evaluated, workers * 4)
    result.read_counts = dict(sorted(counts.items()))
    return result
