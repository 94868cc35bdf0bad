"""The per-patient join and evaluation shared by both engines, so that embedded and Spark give the same lines.

Input: one patient's rows (from the spill shards or a Spark group) plus the side tables (studies,
organisations, practitioners). Output: finding and error lines, each with a sort key that depends only on
the input (file, line, entry, ids), never on the engine or the partitioning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .partition import Row, SideRow
from .references import ref_of, study_refs

ENTERED_IN_ERROR = "entered-in-error"


class EvaluatorLike(Protocol):
    def evaluate(self, resources: list[tuple[str, dict[str, Any]]], targets: Any = None) -> Any: ...


# ----------------------------------------------------------------------------------------- side tables


@dataclass
class SideTables:
    """Non-patient resources some patients need. Few, so held whole (and broadcast to Spark executors)."""

    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # Organization/x, Practitioner/x -> display name
    role_practitioner: dict[str, str] = field(default_factory=dict)  # PractitionerRole/x -> Practitioner/y
    organization_of: dict[str, str] = field(default_factory=dict)  # PractitionerRole/x, Practitioner/y -> Org

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> SideTables:
        return cls(**orjson.loads(data))


def _human_name(res: Mapping[str, Any]) -> str | None:
    names = res.get("name")
    if isinstance(names, str):
        return names  # Organization.name
    for n in names or ():
        if isinstance(n, dict):
            if isinstance(n.get("text"), str):
                return n["text"]
            parts = [*(p for p in n.get("prefix") or () if isinstance(p, str))]
            parts += [p for p in n.get("given") or () if isinstance(p, str)]
            if isinstance(n.get("family"), str):
                parts.append(n["family"])
            if parts:
                return " ".join(parts)
    return None


def build_side_tables(rows: Iterable[SideRow]) -> SideTables:
    """Later records of the same resource win, in input order, so the result is deterministic."""
    t = SideTables()
    for row in sorted(rows, key=lambda r: (r.file_index, r.line, r.entry)):
        try:
            res = orjson.loads(row.raw)
        except orjson.JSONDecodeError:
            continue
        rtype = row.ref.split("/", 1)[0]
        if rtype == "ResearchStudy":
            t.studies[row.ref] = res
        elif rtype in ("Organization", "Practitioner"):
            name = _human_name(res)
            if name:
                t.names[row.ref] = name
        elif rtype == "PractitionerRole":
            prac = ref_of(res.get("practitioner"))
            org = ref_of(res.get("organization"))
            if prac:
                t.role_practitioner[row.ref] = prac
            if org:
                t.organization_of[row.ref] = org
                if prac:
                    t.organization_of.setdefault(prac, org)
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
    evaluated: int = 0  # ServiceRequests evaluated (all statuses except entered-in-error)


def _requester(sr: Mapping[str, Any], finding_requester: str | None, side: SideTables) -> dict[str, Any]:
    ref = ref_of(sr.get("requester")) or (finding_requester if finding_requester else None)
    display = sr.get("requester", {}).get("display") if isinstance(sr.get("requester"), dict) else None
    person = side.role_practitioner.get(ref, ref) if ref else None
    org = None
    if ref:
        org = ref if ref.startswith("Organization/") else side.organization_of.get(ref)
        if org is None and person:
            org = side.organization_of.get(person)
    return {
        "requester": ref,
        "requesterName": side.names.get(person or "", None) or (display if isinstance(display, str) else None),
        "organization": org,
        "organizationName": side.names.get(org or "", None),
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy of matched facts (tuples -> lists, sets -> sorted lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    return value


def _issue_reason(message: str) -> str:
    return message if message.startswith("dangling reference") else f"invalid resource: {message}"


def evaluate_patient(
    key: str,
    rows: Sequence[Row],
    side: SideTables,
    evaluator: EvaluatorLike,
    file_paths: Sequence[str],
) -> PatientResult:
    """Join one patient's records with the studies they reference, evaluate, and format the lines."""
    out = PatientResult()
    if not any(r.rtype == "ServiceRequest" for r in rows):
        return out  # nothing to evaluate (most patients): not even parsed
    resources: dict[str, dict[str, Any]] = {}
    where: dict[str, Row] = {}
    for row in sorted(rows, key=Row.position):
        try:
            res = orjson.loads(row.raw)
        except orjson.JSONDecodeError as exc:  # cannot happen for rows we wrote, but never fatal
            out.errors.append(error_line(file_paths[row.file_index], row.file_index, row.line or None,
                                         row.entry or None, f"malformed JSON: {exc}"))
            continue
        ref = f"{row.rtype}/{res.get('id')}"
        if ref in where:
            prev = where[ref]
            out.errors.append(error_line(
                file_paths[prev.file_index], prev.file_index, prev.line or None, prev.entry or None,
                f"duplicate resource {ref}: superseded by {file_paths[row.file_index]}"
                f"{f' line {row.line}' if row.line else ''}{f' entry {row.entry}' if row.entry else ''}",
                ref))
        resources[ref] = res
        where[ref] = row
    orders = [r for r, res in resources.items()
              if r.startswith("ServiceRequest/") and res.get("status") != ENTERED_IN_ERROR]
    if not orders:
        return out
    # Attach the referenced studies. A missing one is reported by the evaluator itself (as an issue, below)
    # and the patient is still evaluated; the audit adds the check the evaluator has no reason to make.
    studies: dict[str, dict[str, Any]] = {}
    for ref, res in resources.items():
        for sref in study_refs(res):
            if sref in side.studies:
                studies[sref] = side.studies[sref]
        if ref.startswith("ServiceRequest/"):
            for rr in res.get("reasonReference") or ():
                target = ref_of(rr)
                if target and target.startswith("Condition/") and target not in resources:
                    row = where[ref]
                    out.errors.append(error_line(
                        file_paths[row.file_index], row.file_index, row.line or None, row.entry or None,
                        f"dangling reference to {target} (not found for this patient)", ref))
    # Each resource travels with its "Type/id" as path, so issues and findings point back to their row.
    batch = [(ref, res) for ref, res in resources.items()] + [(s, studies[s]) for s in sorted(studies)]
    result = evaluator.evaluate(batch)
    out.evaluated = result.orders_evaluated
    first_order = where[orders[0]]
    reported: set[str] = set()
    for issue in result.issues:
        path = str(getattr(issue, "path", "") or "")
        # ids may contain dots: the owner is the longest record ref the issue's path starts with
        owner = max((r for r in where if path == r or path.startswith((r + ".", r + "["))), key=len, default=None)
        row = where[owner] if owner else first_order
        if owner and issue.message.startswith("dangling reference"):
            reported.add(owner)
        out.errors.append(error_line(file_paths[row.file_index], row.file_index, row.line or None,
                                     row.entry or None, _issue_reason(issue.message), path or None))
    # The evaluator only looks up the studies that could exempt an order (enrolled subjects, linked orders);
    # an auditor wants every ResearchSubject pointing nowhere.
    for ref, res in resources.items():
        if ref.startswith("ResearchSubject/") and ref not in reported:
            for sref in study_refs(res):
                if sref not in side.studies:
                    row = where[ref]
                    out.errors.append(error_line(file_paths[row.file_index], row.file_index, row.line or None,
                                                 row.entry or None, f"dangling reference to {sref}", ref))
    for seq, f in enumerate(result.findings):
        order_ref = f.order_ref
        row = where.get(order_ref, first_order)
        sr = resources.get(order_ref, {})
        rec: dict[str, Any] = {
            "serviceRequest": order_ref,
            "patient": f.patient_ref or key,
            "rule": f.rule_id,
            "ruleVersion": f.rule_version,
            "indicator": f.indicator,
            "summary": f.summary,
            "evidence": list(f.evidence_ids),
            **_requester(sr, f.requester, side),
            "authoredOn": f.authored_on,
            "status": f.status,
            "matched": _plain(f.matched),
            "source": {"file": file_paths[row.file_index], "line": row.line or None, "entry": row.entry or None},
            "card": _plain(f.card),
        }
        out.findings.append((
            sort_key(row.file_index, row.line, row.entry, order_ref, f.rule_id, f"{seq:04d}"),
            orjson.dumps(rec),
        ))
    return out


def evaluate_patient_or_report(key: str, rows: Sequence[Row], side: SideTables, evaluator: EvaluatorLike,
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
