"""The per-patient join and evaluation shared by both engines, so that embedded and Spark give the same lines.

Input: one patient's rows (from the spill shards or a Spark group) plus the side tables (studies,
organisations, practitioners). Output: finding and error lines, each with a sort key that depends only on
the input (file, line, entry, ids), never on the engine or the partitioning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ccsvi_cds.evaluate import OrderScreen
from ccsvi_cds.facts.directory import directory_entry
from ccsvi_cds.facts.extract import unresolved
from ccsvi_cds.facts.fhir import Located
from ccsvi_cds.facts.issues import IssueKind

from .partition import Row, SideRow

if TYPE_CHECKING:
    from ccsvi_cds.evaluate import Evaluator


# ----------------------------------------------------------------------------------------- side tables


@dataclass
class SideTables:
    """Non-patient resources some patients need. Few, so held whole (and broadcast to Spark executors)."""

    referenced: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Type/id" -> resource (studies)
    names: dict[str, str] = field(default_factory=dict)  # Organization/x, Practitioner/x -> display name
    role_practitioner: dict[str, str] = field(default_factory=dict)  # PractitionerRole/x -> Practitioner/y
    organization_of: dict[str, str] = field(default_factory=dict)  # PractitionerRole/x, Practitioner/y -> Org

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> SideTables:
        return cls(**orjson.loads(data))


def build_side_tables(rows: Iterable[SideRow]) -> SideTables:
    """Later records of the same resource win, in input order, so the result is deterministic."""
    t = SideTables()
    for row in sorted(rows, key=lambda r: (r.file_index, r.line, r.entry)):
        try:
            res = orjson.loads(row.raw)
        except orjson.JSONDecodeError:
            continue
        rtype = row.ref.split("/", 1)[0]
        if rtype not in ("Organization", "Practitioner", "PractitionerRole"):
            t.referenced[row.ref] = res  # what the rules follow by reference (ResearchStudy)
            continue
        entry = directory_entry(res)
        if entry.name:
            t.names[row.ref] = entry.name
        if entry.practitioner:
            t.role_practitioner[row.ref] = entry.practitioner
        if entry.organization:
            t.organization_of[row.ref] = entry.organization
            if entry.practitioner:
                t.organization_of.setdefault(entry.practitioner, entry.organization)
    return t


# ----------------------------------------------------------------------------------------- output lines


def sort_key(file_index: int, line: int, entry: int, *rest: str) -> str:
    """A string key whose order is input order, then ids: the same for every engine and partitioning."""
    tail = "|".join(rest)
    if "\t" in tail or "\n" in tail or "\r" in tail:  # part files are "key TAB json" lines
        tail = tail.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return f"{file_index:06d}:{line:012d}:{entry:09d}:" + tail


def error_line(file_path: str, file_index: int, line: int | None, entry: int | None, reason: str,
               resource: str | None = None) -> tuple[str, bytes]:
    rec: dict[str, Any] = {"file": file_path, "line": line}
    if entry is not None:
        rec["entry"] = entry
    if resource:
        rec["resource"] = resource
    rec["reason"] = reason
    return sort_key(file_index, line or 0, entry or 0, resource or "", reason), orjson.dumps(rec)


@dataclass
class PatientResult:
    findings: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[tuple[str, bytes]] = field(default_factory=list)
    # ServiceRequests evaluated here, minus those the read pass counted for this patient (one per record it
    # screened): what turns the read pass's count into the join's exact one (a superseded duplicate is not
    # evaluated twice) for the patients joined.
    evaluated_correction: int = 0


def _requester(ref: str | None, display: str | None, side: SideTables) -> dict[str, Any]:
    person = side.role_practitioner.get(ref, ref) if ref else None
    org = None
    if ref:
        org = ref if ref.startswith("Organization/") else side.organization_of.get(ref)
        if org is None and person:
            org = side.organization_of.get(person)
    return {
        "requester": ref,
        "requesterName": side.names.get(person or "", None) or display,
        "organization": org,
        "organizationName": side.names.get(org or "", None),
    }


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself in matched facts and cards: sets (as sorted lists), other mappings."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def evaluate_patient(
    key: str,
    rows: Sequence[Row],
    side: SideTables,
    evaluator: Evaluator,
    file_paths: Sequence[str],
) -> PatientResult:
    """Evaluate one patient's records through the records core, with what they reference from the side
    tables, and format the lines. Every issue and finding carries its row, so it points back to file/line."""
    out = PatientResult()
    if not any(r.rtype == "ServiceRequest" for r in rows):
        return out  # nothing to evaluate (most patients): not even parsed
    items = []
    for row in sorted(rows, key=Row.position):
        try:
            res = orjson.loads(row.raw)
        except orjson.JSONDecodeError as exc:  # cannot happen for rows we wrote, but never fatal
            out.errors.append(error_line(file_paths[row.file_index], row.file_index, row.line or None,
                                         row.entry or None, f"malformed JSON: {exc}"))
            continue
        items.append(Located(f"{row.rtype}/{res.get('id')}", res, row))
    records = evaluator.read(items)
    records.supply(Located(ref.key, side.referenced[ref.key]) for ref in
                   unresolved(records, evaluator.requirements.by_reference)
                   if ref.key is not None and ref.key in side.referenced)
    result = evaluator.evaluate_records(records)
    screened = sum(1 for item in items if item.resource.get("resourceType") == "ServiceRequest"
                   and evaluator.screen(item.resource) is not OrderScreen.NOT_EVALUATED)
    out.evaluated_correction = result.orders_evaluated - screened
    first = min(rows, key=Row.position)
    for issue in result.issues:
        row = issue.source if isinstance(issue.source, Row) else first
        reason = issue.message if issue.kind in (IssueKind.DANGLING_REFERENCE, IssueKind.DUPLICATE_ID) \
            else f"invalid resource: {issue.message}"
        out.errors.append(error_line(file_paths[row.file_index], row.file_index, row.line or None,
                                     row.entry or None, reason, issue.path or None))
    for seq, f in enumerate(result.findings):
        row = f.source if isinstance(f.source, Row) else first
        rec: dict[str, Any] = {
            "serviceRequest": f.order_ref,
            "patient": f.patient_ref or key,
            "rule": f.rule_id,
            "ruleVersion": f.rule_version,
            "indicator": f.indicator,
            "summary": f.summary,
            "evidence": list(f.evidence_ids),
            **_requester(f.requester, f.requester_display, side),
            "authoredOn": f.authored_on,
            "status": f.status,
            "matched": f.matched,
            "source": {"file": file_paths[row.file_index], "line": row.line or None, "entry": row.entry or None},
            "card": f.card,
        }
        out.findings.append((
            sort_key(row.file_index, row.line, row.entry, f.order_ref, f.rule_id, f"{seq:04d}"),
            orjson.dumps(rec, default=_json_default, option=orjson.OPT_NON_STR_KEYS),
        ))
    return out


def evaluate_patient_or_report(key: str, rows: Sequence[Row], side: SideTables, evaluator: Evaluator,
                               file_paths: Sequence[str]) -> PatientResult:
    """`evaluate_patient`, with a failure reported as an error line on the patient's first record: one
    patient's failure must not lose the rest of a shard or partition."""
    try:
        return evaluate_patient(key, rows, side, evaluator, file_paths)
    except Exception as exc:  # noqa: BLE001
        first = min(rows, key=Row.position)
        out = PatientResult()
        out.errors.append(error_line(file_paths[first.file_index], first.file_index, first.line or None,
                                     first.entry or None, f"evaluation failed: {type(exc).__name__}", key))
        return out
