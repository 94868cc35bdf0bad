"""One audit from inputs to published outputs, whichever engine runs the evaluation.

Order matters for the guarantees: everything that can reject the whole audit (paths, non-FHIR files, a
broken rule pack) is checked before any work; outputs are staged and published only once complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from .join import error_line
from .outputs import (
    OUTPUT_NAMES,
    publish,
    sha256_file,
    staged,
    write_errors,
    write_findings,
    write_json,
)
from .parts import EngineResult, write_part
from .report import write_report
from .scratch import LEGACY_SPILL_PREFIX, SPILL_PREFIX, default_workdir, private_dir, remove_stale
from .sources import TRUNCATED, UNREADABLE, InputFile, Skipped, discover, iter_cut_tasks

Progress = Callable[[str, int, int, int], None]  # (phase, advance, total, resources read)


@dataclass(frozen=True)
class AuditOptions:
    inputs: Sequence[str]
    out_dir: Path
    rules_dir: Path
    engine: Literal["embedded", "spark"] = "embedded"
    workers: int | None = None
    spark_master: str | None = None
    spark_conf: Sequence[tuple[str, str]] = ()
    workdir: Path | None = None  # where the private spill directory goes; default: tempfile.gettempdir()
    base_url: str | None = None  # the service's public URL, for card links (as the EHR would see them)
    validate: bool = False  # full FHIR validation of every joined resource first (slow: ~3k resources/s/core)


def _tool_version() -> str:
    try:
        return version("ccsvi-cds")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def _manifest_checks(files: Sequence[InputFile], result: EngineResult, scratch: Path) -> None:
    """Compare each file's Bulk Data manifest ``count`` with the records read; a difference is a file-level
    error (the export was cut short, or the file is not the one the manifest describes)."""
    lines = []
    for idx, f in enumerate(files):
        if f.expected is None:
            continue
        got = result.records_by_file.get(idx, 0)
        if got < f.expected:
            reason = (f"{TRUNCATED}: the Bulk Data manifest lists {f.expected:,} resources in this file, "
                      f"{got:,} were read")
        elif got > f.expected:
            reason = (f"{UNREADABLE}: the Bulk Data manifest lists {f.expected:,} resources in this file, "
                      f"{got:,} were read (not the file the manifest describes)")
        else:
            continue
        lines.append(error_line(f.path, idx, None, None, reason))
    part = write_part(scratch / "manifest.errors", lines)
    if part:
        result.error_parts.append(part)


def run_audit(opts: AuditOptions, progress: Progress | None = None,
              notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the audit and publish the outputs; returns summary.json's content. Raises InputError/PackError.

    ``notice``: told once for each file of an input directory that is skipped (not FHIR). A file that could
    not be read to its end does not raise: summary.json lists it under ``incomplete``."""
    from ccsvi_cds.rulepack import load_pack

    started = time.monotonic()
    started_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    skipped: list[Skipped] = []
    files = discover(opts.inputs, skipped)  # InputError: before any work
    for s in skipped:
        if notice is not None:
            notice(f"skipped {s.path}: {s.reason}")
    pack = load_pack(opts.rules_dir)  # PackError: before any work
    hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")  # overlaps the engine's work
    digest_futures: list[Future[str]] = []

    def start_hashing() -> None:
        digest_futures.extend(hashing.submit(sha256_file, Path(f.path)) for f in files)

    opts.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(opts.out_dir, LEGACY_SPILL_PREFIX, legacy=True)  # clinical data left by earlier versions
    try:
        with private_dir(opts.workdir or default_workdir(), SPILL_PREFIX) as scratch:
            result: EngineResult
            if opts.engine == "spark":
                from .spark import run_spark  # PySpark is optional: imported only here

                start_hashing()
                result = run_spark(files, opts.rules_dir, scratch, master=opts.spark_master,
                                   conf=opts.spark_conf, base_url=opts.base_url, digest=pack.digest,
                                   validate=opts.validate, pack=pack)
            else:
                from .embedded import run_embedded

                result = run_embedded(files, iter_cut_tasks(files), opts.rules_dir, scratch, opts.workers,
                                      progress, opts.base_url, pack.digest, pack, on_started=start_hashing,
                                      validate=opts.validate)
            _manifest_checks(files, result, scratch)
            digests = [d.result() for d in digest_futures]
            with staged(opts.out_dir) as stage:
                return _write_outputs(opts, stage, result, pack, files, digests, skipped, started, started_at)
    finally:
        hashing.shutdown(cancel_futures=True)


def _write_outputs(opts: AuditOptions, stage: Path, result: EngineResult, pack: Any, files: Sequence[InputFile],
                   digests: Sequence[str], skipped: Sequence[Skipped], started: float,
                   started_at: str) -> dict[str, Any]:
    stats = write_findings(stage, result.finding_parts)
    errors = write_errors(stage, result.error_parts)
    rule_indicator = {rule_id: pack.rule(rule_id).indicator for rule_id in stats.by_rule}
    summary: dict[str, Any] = {
        "tool": {"name": "ccsvi-cds audit", "version": _tool_version()},
        "engine": opts.engine,
        "fhirValidation": opts.validate,
        "rulePack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
        "inputs": [{"file": f.path, "bytes": f.size, "sha256": d} for f, d in zip(files, digests)],
        "skippedFiles": [{"file": s.path, "reason": s.reason} for s in skipped],
        "complete": not errors.incomplete,
        "incomplete": errors.incomplete,  # files not read to their end: records are missing
        "read": {"total": sum(result.read_counts.values()), "byType": result.read_counts},
        "patientsJoined": result.patients,  # patients with an order some rule could match: joined and evaluated in full
        "serviceRequestsEvaluated": result.evaluated,
        "findings": {
            "total": stats.total,
            "patients": len(stats.patients),
            "byRule": dict(sorted(stats.by_rule.items())),
            "byIndicator": dict(sorted(stats.by_indicator.items())),
            "ruleIndicator": dict(sorted(rule_indicator.items())),
        },
        "errors": {"total": errors.total, "byKind": dict(sorted(errors.kinds.items()))},
        "startedAt": started_at,
        "durationSeconds": 0.0,
    }
    summary["durationSeconds"] = round(time.monotonic() - started, 3)
    write_report(stage / "report.html", summary, stats, errors.kinds)
    summary["outputs"] = {n: sha256_file(stage / n) for n in OUTPUT_NAMES if n != "summary.json"}
    summary["durationSeconds"] = round(time.monotonic() - started, 3)
    write_json(stage / "summary.json", summary)
    publish(stage, opts.out_dir, OUTPUT_NAMES)
    return summary
