"""Write the audit outputs atomically: findings.ndjson, findings.csv, errors.ndjson, report.html, summary.json.

Every file is first written in a staging directory inside DIR and then moved into place with os.replace, so a
reader never sees a half-written file under a final name. summary.json is removed first and moved in last,
and lists the sha256 of the other files: it is the marker that an audit completed, and its digests tell
whether the files beside it belong to it.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .detectedissue import detected_issue
from .parts import merge_parts
from .scratch import STAGING_PREFIX, private_dir
from .sources import FILE_LEVEL_KINDS

OUTPUT_NAMES = ("findings.ndjson", "findings.csv", "detectedissues.ndjson", "errors.ndjson", "report.html",
                "summary.json")
REPORT_TABLE_MAX = 2000  # findings shown in the HTML table; findings.csv always has them all

CSV_COLUMNS = ("serviceRequest", "patient", "rule", "indicator", "summary", "evidence", "requester",
               "requesterName", "organization", "organizationName", "authoredOn", "status", "file", "line",
               "entry", "matched")


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A private staging directory inside ``out_dir`` (same filesystem, so os.replace is atomic); removed on
    exit, and by the next audit if this one is killed."""
    with private_dir(out_dir, STAGING_PREFIX) as stage:
        yield stage


def publish(stage: Path, out_dir: Path, names: Iterable[str]) -> None:
    """Move staged files into place; summary.json (the completion marker) goes away first, comes back last."""
    names = list(names)
    (out_dir / "summary.json").unlink(missing_ok=True)
    for name in sorted(names, key=lambda n: n == "summary.json"):
        src = stage / name
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(src, out_dir / name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class FindingStats:
    """Aggregates over all findings, built while they stream to disk (memory ~ distinct requesters)."""

    total: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    by_indicator: Counter[str] = field(default_factory=Counter)
    by_month: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_requester: Counter[str] = field(default_factory=Counter)
    by_organization: Counter[str] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)
    table: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rec: Mapping[str, Any]) -> None:
        self.total += 1
        self.by_rule[rec["rule"]] += 1
        self.by_indicator[rec["indicator"]] += 1
        authored = rec.get("authoredOn")
        self.by_month[authored[:7] if isinstance(authored, str) and len(authored) >= 7 else "unknown"] += 1
        self.by_status[rec.get("status") or "unknown"] += 1
        req = rec.get("requester") or "unknown"
        org = rec.get("organization") or "unknown"
        self.by_requester[req] += 1
        self.by_organization[org] += 1
        if rec.get("requesterName"):
            self.names[req] = rec["requesterName"]
        if rec.get("organizationName"):
            self.names[org] = rec["organizationName"]
        self.patients.add(rec["patient"])
        if len(self.table) < REPORT_TABLE_MAX:
            self.table.append({k: v for k, v in rec.items() if k != "card"} | {
                "links": [lk for lk in (rec.get("card") or {}).get("links") or () if isinstance(lk, dict)]})


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """Text from the records (a requester's name, say) must not run as a formula when the CSV is opened in
    a spreadsheet: such cells get a leading apostrophe (the usual CSV-injection defence)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_row(rec: Mapping[str, Any]) -> list[Any]:
    return [_cell(v) for v in _csv_values(rec)]


def _csv_values(rec: Mapping[str, Any]) -> list[Any]:
    src = rec.get("source") or {}
    return [rec.get("serviceRequest"), rec.get("patient"), rec.get("rule"), rec.get("indicator"),
            rec.get("summary"), ";".join(rec.get("evidence") or ()), rec.get("requester"),
            rec.get("requesterName"), rec.get("organization"), rec.get("organizationName"),
            rec.get("authoredOn"), rec.get("status"), src.get("file"), src.get("line"), src.get("entry"),
            orjson.dumps(rec.get("matched"), option=orjson.OPT_SORT_KEYS).decode()]


def write_findings(stage: Path, parts: Iterable[Path]) -> FindingStats:
    """findings.ndjson, findings.csv and detectedissues.ndjson from the sorted parts, in one streaming pass."""
    stats = FindingStats()
    with (open(stage / "findings.ndjson", "wb") as nd,
          open(stage / "findings.csv", "w", newline="", encoding="utf-8") as cf,
          open(stage / "detectedissues.ndjson", "wb") as di):
        w = csv.writer(cf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for line in merge_parts(parts):
            nd.write(line + b"\n")
            rec = orjson.loads(line)
            w.writerow(_csv_row(rec))
            di.write(orjson.dumps(detected_issue(rec)) + b"\n")
            stats.add(rec)
    return stats


@dataclass
class ErrorStats:
    """errors.ndjson in figures: the total, counts per kind, and the files that could not be read to
    their end (a file-level kind: the audit finished with records missing)."""

    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    incomplete: list[dict[str, Any]] = field(default_factory=list)


def write_errors(stage: Path, parts: Iterable[Path]) -> ErrorStats:
    """errors.ndjson from the sorted parts."""
    stats = ErrorStats()
    with open(stage / "errors.ndjson", "wb") as fh:
        for line in merge_parts(parts):
            fh.write(line + b"\n")
            stats.total += 1
            rec = orjson.loads(line)
            reason = rec.get("reason", "")
            kind = reason.split(":", 1)[0]
            stats.kinds[kind] += 1
            if kind in FILE_LEVEL_KINDS:
                stats.incomplete.append({"file": rec.get("file"), "kind": kind, "reason": reason})
    return stats


def write_json(path: Path, obj: Any) -> None:
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
