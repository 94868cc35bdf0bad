"""One audit from inputs to published outputs, whichever engine runs the evaluation.

Order matters for the guarantees: everything that can reject the whole audit (paths, non-FHIR files, a
broken rule pack) is checked before any work; outputs are staged and published only once complete.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from .outputs import (
    OUTPUT_NAMES,
    fresh_dir,
    publish,
    sha256_file,
    staged,
    write_errors,
    write_findings,
    write_json,
)
from .parts import EngineResult
from .report import write_report
from .sources import discover, iter_cut_tasks, plan_tasks

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AuditOptions:
    inputs: Sequence[str]
    out_dir: Path
    rules_dir: Path
    engine: Literal["embedded", "spark"] = "embedded"
    workers: int | None = None
    spark_master: str | None = None
    spark_conf: Sequence[tuple[str, str]] = ()
    workdir: Path | None = None  # where spill files go; default: a temp dir next to the outputs
    base_url: str | None = None  # the service's public URL, for card links (as the EHR would see them)
    validate: bool = False  # full FHIR validation of every joined resource first (slow: ~3k resources/s/core)


def _tool_version() -> str:
    try:
        return version("ccsvi-cds")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def run_audit(opts: AuditOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the audit and publish the outputs; returns summary.json's content. Raises InputError/PackError."""
    from ccsvi_cds.rulepack import load_pack

    started = time.monotonic()
    started_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    files = discover(opts.inputs)  # InputError: before any work
    pack = load_pack(opts.rules_dir)  # PackError: before any work
    hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")  # overlaps the engine's work
    digest_futures: list[Future[str]] = []

    def start_hashing() -> None:
        digest_futures.extend(hashing.submit(sha256_file, Path(f.path)) for f in files)

    opts.out_dir.mkdir(parents=True, exist_ok=True)
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
    # Named first, created inside the try: a signal (Ctrl-C, SIGTERM) at any point leaves nothing behind.
    scratch = fresh_dir(opts.workdir or opts.out_dir, ".ccsvi-audit-spill-")
    try:
        scratch.mkdir()
        result: EngineResult
        if opts.engine == "spark":
            from .spark import run_spark  # PySpark is optional: imported only here

            start_hashing()
            result = run_spark(files, plan_tasks(files), opts.rules_dir, scratch, master=opts.spark_master,
                               conf=opts.spark_conf, base_url=opts.base_url, digest=pack.digest,
                               validate=opts.validate, pack=pack)
        else:
            from .embedded import run_embedded

            result = run_embedded(files, iter_cut_tasks(files), opts.rules_dir, scratch, opts.workers, progress,
                                  opts.base_url, pack.digest, pack, on_started=start_hashing,
                                  validate=opts.validate)
        digests = [d.result() for d in digest_futures]
        with staged(opts.out_dir) as stage:
            stats = write_findings(stage, result.finding_parts)
            n_errors, error_kinds = write_errors(stage, result.error_parts)
            rule_indicator = {rule_id: pack.rule(rule_id).indicator for rule_id in stats.by_rule}
            summary: dict[str, Any] = {
                "tool": {"name": "ccsvi-cds audit", "version": _tool_version()},
                "engine": opts.engine,
                "fhirValidation": opts.validate,
                "rulePack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
                "inputs": [{"file": f.path, "bytes": f.size, "sha256": d} for f, d in zip(files, digests)],
                "read": {"total": sum(result.read_counts.values()), "byType": result.read_counts},
                "patientsEvaluated": result.patients,  # patients with at least one order evaluated
                "serviceRequestsEvaluated": result.evaluated,
                "findings": {
                    "total": stats.total,
                    "patients": len(stats.patients),
                    "byRule": dict(sorted(stats.by_rule.items())),
                    "byIndicator": dict(sorted(stats.by_indicator.items())),
                    "ruleIndicator": dict(sorted(rule_indicator.items())),
                },
                "errors": {"total": n_errors, "byKind": dict(sorted(error_kinds.items()))},
                "startedAt": started_at,
                "durationSeconds": 0.0,
            }
            summary["durationSeconds"] = round(time.monotonic() - started, 3)
            write_report(stage / "report.html", summary, stats, error_kinds)
            summary["outputs"] = {n: sha256_file(stage / n) for n in OUTPUT_NAMES if n != "summary.json"}
            summary["durationSeconds"] = round(time.monotonic() - started, 3)
            write_json(stage / "summary.json", summary)
            publish(stage, opts.out_dir, OUTPUT_NAMES)
        return summary
    finally:
        hashing.shutdown(cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)
