"""The Spark engine: the same reading, join and evaluation as the embedded engine, distributed by PySpark.

Imported only for ``--engine spark`` (PySpark is an optional extra). The read tasks become an RDD, read
twice: pass 1 screens every order (`Evaluator.screen`) and collects side tables, counts, read errors and the
patients with an order some rule could match; pass 2 keeps only those patients' rows and groups them by
patient key with groupByKey (re-reading is cheaper than shipping every row through the JVM, as almost no
patient needs a join). Each executor's Python worker builds its own Evaluator on first use (the engine
handle cannot be pickled or shared). Findings and errors come back through sortByKey +
toLocalIterator with the engine-independent sort keys, so the driver writes exactly the lines the embedded
engine writes. Executors must see the input paths (local mode, or a shared filesystem on a cluster).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccsvi_cds.facts.requirements import data_requirements
from ccsvi_cds.rulepack import load_pack

from . import sources
from .embedded import gather, read_and_route
from .evaluator import build_evaluator
from .join import SideTables, build_side_tables, error_line, evaluate_patient_or_report
from .partition import Routing, Row, RowIndex, key_hash
from .parts import EngineResult
from .sources import InputFile, ReadTask, plan_tasks

if TYPE_CHECKING:
    from ccsvi_cds.evaluate import Evaluator
    from ccsvi_cds.rulepack import RulePack

_EVALUATORS: dict[str, Evaluator] = {}


def _evaluator(pack_b: Any, rules_dir: str, digest: str | None, base_url: str | None, validate: bool) -> Evaluator:
    """One Evaluator per Python worker process, built there on first use from the broadcast rule pack (plain
    data: executors need the ccsvi_cds package, not the rules folder)."""
    key = f"{rules_dir}|{digest}|{base_url}|{validate}"
    ev = _EVALUATORS.get(key)
    if ev is None:
        pack = pack_b.value if pack_b is not None else None
        ev = _EVALUATORS[key] = build_evaluator(rules_dir, digest, base_url, pack, validate=validate)
    return ev


def _screen(files: Sequence[InputFile], routing: Routing, pack_b: Any, rules_dir: str, digest: str | None,
            base_url: str | None, validate: bool, item: tuple[int, ReadTask]) -> Iterator[tuple[Any, ...]]:
    """Pass 1 over one read task: S side row, E error line, W a patient to join (an order some rule could
    match), C per-type counts, I where the task's rows are (kept with the cached pass for pass 2, never
    collected). No patient rows: most patients need no join, so their rows never leave here."""
    screen = _evaluator(pack_b, rules_dir, digest, base_url, validate).screen
    routed = read_and_route(files, item[1], routing, None, screen)  # Spark's tasks know their lines
    errors = [error_line(files[b.file_index].path, b.file_index, b.line, b.entry, b.reason) for b in routed.bad]
    for s in routed.side:
        yield ("S", s)
    for k, v in errors:
        yield ("E", k, v)
    for key in routed.wanted:
        yield ("W", key)
    yield ("C", dict(routed.counts), len(errors), item[1].file_index, routed.records, routed.orders)
    if routed.index.hashes:
        yield ("I", item[0], routed.index)


def _rows(files: Sequence[InputFile], tasks: Sequence[ReadTask], routing: Routing, wanted_b: Any, hashes_b: Any,
          item: tuple[str, int, RowIndex]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Pass 2 over one read task (pass 1's I item): the rows of the patients to join, keyed for the group by
    patient (in NDJSON only the lines pass 1 found them on are parsed: `gather`; a Bundle file in full)."""
    positions = item[2].positions_of(hashes_b.value)
    if not positions:
        return
    task = tasks[item[1]]
    rows: list[Row] = []
    gather(files, task, routing, wanted_b.value, positions if files[task.file_index].kind == "ndjson" else None,
           rows.append)
    for r in rows:
        yield r.key, (r.rtype, r.file_index, r.line, r.entry, r.raw)


def _evaluate(groups: Iterable[tuple[str, Iterable[tuple[Any, ...]]]], side_b: Any, pack_b: Any, rules_dir: str,
              digest: str | None, base_url: str | None, validate: bool,
              paths: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Evaluate each patient group of a partition: F finding, E error, N (findings, errors, evaluated
    correction) counts."""
    side: SideTables = side_b.value
    ev = _evaluator(pack_b, rules_dir, digest, base_url, validate)
    n_findings = n_errors = correction = 0
    for key, values in groups:
        rows = [Row(key, t, fi, ln, en, raw) for t, fi, ln, en, raw in values]
        res = evaluate_patient_or_report(key, rows, side, ev, paths)
        for k, v in res.findings:
            yield ("F", k, v)
        for k, v in res.errors:
            yield ("E", k, v)
        n_findings += len(res.findings)
        n_errors += len(res.errors)
        correction += res.evaluated_correction
    yield ("N", n_findings, n_errors, correction)


COLLECT_MAX = 200_000  # lines: below this a sorted collect is cheaper than a distributed sort


def _write_sorted(rdd: Any, path: Path, n: int) -> Path | None:
    """Write the ``n`` (key, json) pairs of ``rdd`` in key order. Findings and errors are usually few: one
    collect; beyond COLLECT_MAX, a distributed sort streamed to the driver a partition at a time."""
    if n == 0:
        return None
    lines = sorted(rdd.collect()) if n <= COLLECT_MAX else rdd.sortByKey().toLocalIterator(prefetchPartitions=True)
    with open(path, "wb") as fh:
        fh.writelines(k.encode() + b"\t" + v + b"\n" for k, v in lines)
    return path


def session(master: str | None = None, conf: Sequence[tuple[str, str]] = ()) -> Any:
    """The active SparkSession, or a new one. The master is ``master`` if given, else whatever the usual
    Spark configuration says (spark-defaults.conf in SPARK_CONF_DIR, PYSPARK_SUBMIT_ARGS), else local[*]
    (spark-submit's own default)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None and not conf:
        return active
    # Executors run this interpreter's path (PySpark sends PYSPARK_PYTHON with every task): on a cluster
    # every node must have the same Python with the dependencies at that path (the same venv on every node).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("ccsvi-cds audit")
    if master:
        builder = builder.master(master)
    for k, v in conf:
        builder = builder.config(k, v)
    return builder.getOrCreate()


_SHIPPED: dict[str, Path] = {}  # Spark application id -> the package zip its executors were given


def package_zip(dest: Path) -> Path:
    """The ccsvi_cds package this driver runs, as a zip Python imports from (sources and package data such as
    templates; no bytecode): what spark-submit --py-files would ship."""
    import ccsvi_cds

    root = Path(ccsvi_cds.__file__).resolve().parent
    out = dest / "ccsvi_cds.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                z.write(p, (Path("ccsvi_cds") / p.relative_to(root)).as_posix())
    return out


def ship_package(sc: Any) -> None:
    """Give the executors this driver's ccsvi_cds through Spark's own mechanism (SparkContext.addPyFile: each
    executor fetches the zip and puts it first on its Python workers' sys.path), once per application. The
    zip lives as long as this process: executors that join later fetch it too."""
    if sc.applicationId in _SHIPPED:
        return
    dest = Path(tempfile.mkdtemp(prefix="ccsvi-cds-pyfiles-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    sc.addPyFile(str(package_zip(dest)))
    _SHIPPED[sc.applicationId] = dest


TASKS_PER_CORE = 3  # enough to even out uneven tasks; few enough that Spark's per-task cost stays small
MAX_TASK_BYTES = 64 * 1024 * 1024


def task_bytes(files: Sequence[InputFile], parallelism: int) -> int:
    """The size of one read task: each costs Spark a scheduling round and a Python worker hand-over (~0.1 s
    on a small cluster), so a few per core rather than the embedded engine's 8 MiB; capped so that a lost
    task is cheap to redo."""
    total = sum(f.size for f in files)
    return max(sources.CHUNK_BYTES, min(MAX_TASK_BYTES, -(-total // (TASKS_PER_CORE * max(1, parallelism)))))


def run_spark(files: Sequence[InputFile], rules_dir: Path, workdir: Path,
              master: str | None = None, conf: Sequence[tuple[str, str]] = (),
              base_url: str | None = None, digest: str | None = None, validate: bool = False,
              pack: RulePack | None = None) -> EngineResult:
    """Run the audit on Spark; returns counts and the sorted parts (written by the driver under ``workdir``)."""
    from pyspark import StorageLevel

    spark = session(master, conf)
    sc = spark.sparkContext
    tasks = plan_tasks(files, task_bytes(files, sc.defaultParallelism))
    ship_package(sc)  # the rule pack goes as a broadcast (below); the inputs are read where they are
    files_t = tuple(files)
    paths = [f.path for f in files]
    rules = str(Path(rules_dir).resolve())
    parts = workdir / "parts"
    parts.mkdir(parents=True, exist_ok=True)

    routing = Routing.of(data_requirements(pack if pack is not None else load_pack(rules_dir)))
    pack_b = sc.broadcast(pack) if pack is not None else None
    tasks_rdd = sc.parallelize(list(enumerate(tasks)), max(1, len(tasks)))
    # Pass 1: screen every order; collect the small things (side tables, counts, read errors, who to join).
    items = tasks_rdd.flatMap(lambda t: _screen(files_t, routing, pack_b, rules, digest, base_url, validate, t))
    items.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts: Counter[str] = Counter()
        side_rows = []
        wanted: set[str] = set()
        n_read_errors = 0
        # collect (not toLocalIterator): computes and caches every partition in parallel; this part is small.
        records: Counter[int] = Counter()
        result = EngineResult()
        for tag, *rest in items.filter(lambda x: x[0] in ("S", "C", "W")).collect():
            if tag == "S":
                side_rows.append(rest[0])
            elif tag == "W":
                wanted.add(rest[0])
            else:
                counts.update(rest[0])
                n_read_errors += rest[1]
                records[rest[2]] += rest[3]
                result.evaluated += rest[4]
        side_b = sc.broadcast(build_side_tables(side_rows))
        wanted_b = sc.broadcast(frozenset(wanted))
        hashes_b = sc.broadcast(frozenset(key_hash(k) for k in wanted))
        del side_rows
        result.read_counts, result.records_by_file, result.patients = dict(sorted(counts.items())), dict(records), \
            len(wanted)
        read_errors = _write_sorted(items.filter(lambda x: x[0] == "E").map(lambda x: (x[1], x[2])),
                                    parts / "read.errors", n_read_errors)
        # Pass 2: from each task's index (cached where pass 1 ran), read again only the lines of the wanted
        # patients' rows, group them by patient, evaluate where they are. Only those rows are shuffled (a small
        # share of the input): a few groups per core.
        n_groups = max(1, min(len(wanted), TASKS_PER_CORE * sc.defaultParallelism))
        out = (items.filter(lambda x: x[0] == "I")
               .flatMap(lambda x: _rows(files_t, tasks, routing, wanted_b, hashes_b, x))
               .groupByKey(n_groups)
               .mapPartitions(lambda g: _evaluate(g, side_b, pack_b, rules, digest, base_url, validate, paths)))
        out.persist(StorageLevel.MEMORY_AND_DISK)
        n_findings = n_errors = 0
        for _, nf, ne, correction in out.filter(lambda x: x[0] == "N").collect():
            n_findings += nf
            n_errors += ne
            result.evaluated += correction
    finally:
        items.unpersist()
    try:
        findings = _write_sorted(out.filter(lambda x: x[0] == "F").map(lambda x: (x[1], x[2])),
                                 parts / "spark.findings", n_findings)
        errors = _write_sorted(out.filter(lambda x: x[0] == "E").map(lambda x: (x[1], x[2])),
                               parts / "eval.errors", n_errors)
    finally:
        out.unpersist()
    result.finding_parts = [p for p in (findings,) if p]
    result.error_parts = [p for p in (read_errors, errors) if p]
    for b in (side_b, wanted_b, hashes_b, pack_b):
        if b is not None:
            b.unpersist()
    return result
