"""Project one patient's records onto the flat facts of facts/schema.py.

Pure: records and the pack's policies in, facts and issues out. A malformed resource becomes an `Issue` with
its FHIR path and is skipped; the rest of the input is still evaluated. Every reference the rules need is
followed here and only here (`followed_references` lists them, so a shell can fetch what is missing).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from ccsvi_cds.facts.classify import Classifiers
from ccsvi_cds.facts.fhir import (
    Coded,
    Located,
    Resource,
    ShapeError,
    as_list,
    as_obj,
    as_str,
    is_r5,
    iter_extensions,
)
from ccsvi_cds.facts.issues import Issue, IssueKind
from ccsvi_cds.facts.memo import Memo, memo_key
from ccsvi_cds.facts.records import PatientRecords, Records
from ccsvi_cds.facts.references import Ref, RefForm
from ccsvi_cds.rulepack.model import RecordPolicy, TrialPolicy

RESEARCH_STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
OWN_ELEMENTS = ("status", "code", "bodySite")  # all `Projector.own_fields` reads of a resource
MEMO_SIZE = 10_000  # distinct values in each memo of `Projector._own_parts` and `Projector._condition`
Fact = dict[str, Any]


@dataclass
class PatientFacts:
    """Everything known about one patient, and the facts projected from it."""

    patient: str | None
    facts: list[Fact] = field(default_factory=list)
    orders: dict[str, Located] = field(default_factory=dict)  # order key -> where it was read

    def fact(self, ref: str) -> Fact | None:
        return next((f for f in self.facts if f.get("ref") == ref), None)


def _status(resource: Resource, path: str) -> str | None:
    return as_str(resource.get("status"), f"{path}.status")


def _concept_code(value: Any, path: str) -> str | None:
    concept = as_obj(value, path) or {}
    for k, coding in enumerate(as_list(concept.get("coding"), f"{path}.coding")):
        code = as_str((as_obj(coding, f"{path}.coding[{k}]") or {}).get("code"), f"{path}.coding[{k}].code")
        if code:
            return code
    return None


def study_status(resource: Resource, path: str) -> str:
    """R4: status. R5: the latest actual progressStatus state if any, else status."""
    states = []
    for k, progress in enumerate(as_list(resource.get("progressStatus"), f"{path}.progressStatus")):
        ppath = f"{path}.progressStatus[{k}]"
        progress = as_obj(progress, ppath) or {}
        if progress.get("actual") is False:
            continue
        start = ((as_obj(progress.get("period"), f"{ppath}.period") or {}).get("start")) or ""
        code = _concept_code(progress.get("state"), f"{ppath}.state")
        if code:
            states.append((str(start), k, code))
    if states:
        return max(states)[2]
    return _status(resource, path) or "unknown"


def subject_statuses(resource: Resource, path: str) -> set[str]:
    """R4 ResearchSubject.status; R5 progress[].subjectState codes."""
    found: set[str] = set()
    if not is_r5(resource):
        status = _status(resource, path)
        if status:
            found.add(status)
    for k, progress in enumerate(as_list(resource.get("progress"), f"{path}.progress")):
        ppath = f"{path}.progress[{k}]"
        progress = as_obj(progress, ppath) or {}
        if progress.get("endDate"):
            continue
        code = _concept_code(progress.get("subjectState"), f"{ppath}.subjectState")
        if code:
            found.add(code)
    return found


# ------------------------------------------------------------------------------ references the rules follow


def _key(item: Located) -> str:
    return f"{item.resource['resourceType']}/{item.resource['id']}"


def _reason_refs(records: Records, item: Located) -> Iterator[tuple[Any, str, Ref | None]]:
    """(Reference element, its path, what it reads as) for R4 reasonReference and R5 reason.reference."""
    res, path, key = item.resource, item.path, _key(item)
    for k, value in enumerate(as_list(res.get("reasonReference"), f"{path}.reasonReference")):
        rpath = f"{path}.reasonReference[{k}]"
        yield value, rpath, records.reference(value, rpath, key)
    for k, reason in enumerate(as_list(res.get("reason"), f"{path}.reason")):
        ipath = f"{path}.reason[{k}]"
        reason = as_obj(reason, ipath) or {}
        if "reference" in reason:
            yield reason["reference"], f"{ipath}.reference", records.reference(reason["reference"],
                                                                               f"{ipath}.reference", key)


def _study_refs(records: Records, item: Located) -> Iterator[tuple[str, Ref | None]]:
    """(path, reference) of the ResearchStudies an order (workflow-researchStudy) or a subject points to."""
    res, path, key = item.resource, item.path, _key(item)
    if res["resourceType"] == "ResearchSubject":
        yield f"{path}.study", records.reference(res.get("study"), f"{path}.study", key)
    for epath, ext in iter_extensions(res, path, RESEARCH_STUDY_EXT):
        yield f"{epath}.valueReference", records.reference(ext.get("valueReference"), f"{epath}.valueReference", key)


_REFERRING = frozenset(("reasonReference", "reason", "extension"))  # what the two readers above read


def followed_references(records: Records) -> Iterator[Ref]:
    """Every reference the projection follows, for shells that can fetch what the input lacks."""
    for group in records.patients.values():
        for item in group.items:
            res = item.resource
            rtype = res["resourceType"]
            if rtype != "ResearchSubject" and not _REFERRING.intersection(res):
                continue  # none of the elements `_reason_refs` and `_study_refs` read: no reference to follow
            try:
                if rtype in ("ServiceRequest", "Procedure"):
                    yield from (ref for _, _, ref in _reason_refs(records, item) if ref is not None)
                if rtype in ("ServiceRequest", "ResearchSubject"):
                    yield from (ref for _, ref in _study_refs(records, item) if ref is not None)
            except ShapeError:
                continue  # reported when the patient is projected


def unresolved(records: Records, wanted: Collection[str]) -> list[Ref]:
    """References to resources of the `wanted` types that the records point to but do not hold (e.g. the
    ResearchStudy an order is linked to): what a shell with a FHIR server or a side table should supply."""
    missing: dict[str, Ref] = {}
    for ref in followed_references(records):
        if ref.key and ref.key not in records.index and ref.form is not RefForm.CONTAINED \
                and ref.key.split("/", 1)[0] in wanted:
            missing.setdefault(ref.key, ref)
    return [missing[k] for k in sorted(missing)]


# ------------------------------------------------------------------------------------------ projection


class Projector:
    """Computes a patient's facts against the pack's classifiers and policies."""

    def __init__(self, classify: Classifiers, trial: TrialPolicy, policy: RecordPolicy) -> None:
        self.classify = classify
        self.trial_policy = trial
        self.policy = policy
        self._subtype_rank = {s.condition: (i, s.subtype) for i, s in enumerate(policy.ms_subtypes)}
        self._owned: Memo[bytes, tuple[Coded, Coded, dict[str, Any]]] = Memo(MEMO_SIZE)  # see `_own_parts`
        self._conditions: Memo[bytes, tuple[bool, tuple[int, str] | None]] = Memo(MEMO_SIZE)  # see `_condition`

    # --- conditions and MS evidence

    def condition_counts(self, res: Resource, path: str) -> bool:
        verification = _concept_code(res.get("verificationStatus"), f"{path}.verificationStatus")
        return verification not in self.policy.condition_excluded_verification

    def _condition(self, res: Resource, path: str) -> tuple[bool, tuple[int, str] | None]:
        """(whether a Condition counts, the MS rank its code gives if it does), memoised on what they read
        (verificationStatus, code): patients' problem lists repeat the same few codes. A malformed one raises
        every time (nothing is kept)."""
        key = memo_key((res.get("verificationStatus"), res.get("code")))
        found = self._conditions.get(key) if key is not None else None
        if found is None:
            rank = None
            counts = self.condition_counts(res, path)
            if counts:
                coded = Coded()
                coded.add_concept(res.get("code"), f"{path}.code")
                rank = self.ms_rank(coded)
            found = self._conditions.put(key, (counts, rank))
        return found

    def ms_rank(self, coded: Coded) -> tuple[int, str] | None:
        """(precedence, subtype) of the MS value `coded` gives, or None. When it is MS, the text alone may
        make it more specific: a generic MS code beside "relapsing-remitting MS" text is relapsing-remitting."""
        rank = self._subtype_rank.get(self.classify("condition", coded))
        if rank is None or not coded.texts or rank[0] == 0:
            return rank
        text_only = Coded()
        text_only.texts = coded.texts
        by_text = self._subtype_rank.get(self.classify("condition", text_only))
        return min(rank, by_text) if by_text is not None else rank

    def reasons(self, records: Records, item: Located, issues: list[Issue]) -> tuple[Coded, list[Coded]]:
        """(reason codes and texts, the codes of reason Conditions) for R4 reasonCode/reasonReference, R5
        reason (CodeableReference), and notes. A referenced Condition counts only if it would on its own."""
        res, path = item.resource, item.path
        coded = Coded()
        conditions: list[Coded] = []
        coded.add_concepts(res.get("reasonCode"), f"{path}.reasonCode")
        for k, reason in enumerate(as_list(res.get("reason"), f"{path}.reason")):
            ipath = f"{path}.reason[{k}]"
            coded.add_concept((as_obj(reason, ipath) or {}).get("concept"), f"{ipath}.concept")
        for value, rpath, ref in _reason_refs(records, item):
            found = records.resolve(ref)
            if found is not None and found.resource.get("resourceType") == "Condition":
                if self.condition_counts(found.resource, found.path):
                    condition = Coded()
                    condition.add_concept(found.resource.get("code"), f"{found.path}.code")
                    coded.extend(condition)
                    conditions.append(condition)
                continue
            if found is None and ref is not None and ref.followable:
                issues.append(Issue(rpath, f"dangling reference to {ref.key} (not found for this patient)",
                                    IssueKind.DANGLING_REFERENCE, item.source))
            if isinstance(value, dict):
                coded.add_text(value.get("display"), f"{rpath}.display")
        for k, note in enumerate(as_list(res.get("note"), f"{path}.note")):
            coded.add_text((as_obj(note, f"{path}.note[{k}]") or {}).get("text"), f"{path}.note[{k}].text")
        return coded, conditions

    # --- procedures and orders

    @staticmethod
    def _what_where(res: Resource, path: str) -> tuple[Coded, Coded]:
        """(what is done: the code; where: bodySite and the code) of a ServiceRequest or a Procedure. Reads
        only OWN_ELEMENTS (with `_own`): what `own_key` is made of."""
        what = Coded()
        code = res.get("code")
        if isinstance(code, dict) and "concept" in code:  # R5 ServiceRequest.code: CodeableReference
            what.add_concept(code.get("concept"), f"{path}.code.concept")
        else:
            what.add_concept(code, f"{path}.code")
        where = Coded()
        where.add_concepts(res.get("bodySite"), f"{path}.bodySite")
        where.extend(what)
        return what, where

    def order_counts(self, res: Resource, path: str) -> bool:
        """Whether a ServiceRequest is evaluated at all (its status is not excluded by the pack)."""
        return _status(res, path) not in self.policy.order_excluded_status

    def own_fields(self, res: Resource, path: str) -> dict[str, Any]:
        """The fields a ServiceRequest or Procedure fact takes from its own resource alone (requirements.own_fields):
        the same values its full projection gets, so a record can be judged before any join."""
        return dict(self._own_parts(res, path)[2])

    def _own_parts(self, res: Resource, path: str) -> tuple[Coded, Coded, dict[str, Any]]:
        """(what, where, own fields) of a ServiceRequest or Procedure, memoised on `own_key`: orders and
        procedures repeat a few hundred codes, and reading and classifying them was most of a projection.
        Shared between calls, so read-only. A malformed resource raises every time (nothing is kept)."""
        key = self.own_key(res)
        parts = self._owned.get(key) if key is not None else None
        if parts is None:
            what, where = self._what_where(res, path)
            parts = self._owned.put(key, (what, where, self._own(res, path, what, where)))
        return parts

    @staticmethod
    def own_key(res: Resource) -> bytes | None:
        """What `own_fields` depends on, as a `memo_key` (None: do not memoise): a batch reads millions of
        orders that repeat a few hundred codes."""
        get = res.get
        return memo_key((get("status"), get("code"), get("bodySite")))  # OWN_ELEMENTS, spelt out: hot

    def _own(self, res: Resource, path: str, what: Coded, where: Coded) -> dict[str, Any]:
        return {
            "status": _status(res, path),
            "procedure": self.classify("procedure", what),
            "site": self.classify("site", where),
            "vessel": self.classify("vessel", where),
        }

    def venous_fields(self, records: Records, item: Located, issues: list[Issue]) -> tuple[dict[str, Any], Coded]:
        """(what is done, where, why as classified values; the reason as read) for a ServiceRequest or a
        Procedure."""
        res, path = item.resource, item.path
        what, _, own = self._own_parts(res, path)
        why, _ = self.reasons(records, item, issues)
        instruction = res.get("patientInstruction")
        why.add_text(instruction if isinstance(instruction, str) else None, f"{path}.patientInstruction")
        reason = Coded()
        reason.extend(why)
        why.texts.extend(what.texts)
        fields = {
            **own,
            "reason": self.classify("reason", why),
            "text": "; ".join(dict.fromkeys(what.texts + [d for _, d in what.codings if d]))[:200] or None,
        }
        return fields, reason

    def trial(self, records: Records, item: Located, enrolled: list[str], issues: list[Issue]) -> dict[str, Any]:
        linked = [ref.key for _, ref in _study_refs(records, item) if ref is not None and ref.key]
        candidates = list(dict.fromkeys(linked + enrolled))
        if not candidates:
            return {"trial": "none", "study": None, "study_status": None, "study_title": None}
        statuses = []
        for study in candidates:
            found = records.index.get(study)
            status = study_status(found.resource, found.path) if found else "unknown"
            title = as_str(found.resource.get("title"), f"{found.path}.title") if found else None
            statuses.append((study, status, title[:120] if title else None))
        approved = [s for s in statuses if s[1] in self.trial_policy.approved_study_status]
        study, status, title = (approved or statuses)[0]
        if study not in records.index:
            issues.append(Issue(item.path, f"dangling reference to {study}: its status cannot be confirmed",
                                IssueKind.DANGLING_REFERENCE, item.source))
        return {"trial": "approved" if approved else "not-approved", "study": study, "study_status": status,
                "study_title": title}

    def requester(self, records: Records, item: Located) -> tuple[str | None, str | None]:
        """(requester reference as "Type/id", its display): never one standing in for the other."""
        path = f"{item.path}.requester"
        obj = as_obj(item.resource.get("requester"), path)
        if not obj:
            return None, None
        ref = records.reference(obj, path, _key(item))
        return (ref.key if ref is not None and ref.key and "#" not in ref.key else None,
                as_str(obj.get("display"), f"{path}.display"))

    # --- one patient

    def project(self, records: Records, group: PatientRecords, issues: list[Issue]) -> PatientFacts:
        out = PatientFacts(group.patient)
        ms: list[tuple[int, str]] = []
        ms_conditions: set[str] = set()
        enrolled: list[str] = []
        procedures: list[Fact] = []
        pending: list[Located] = []
        for item in group.items:
            res, path = item.resource, item.path
            rtype = res["resourceType"]
            try:
                if rtype == "Condition":
                    counts, rank = self._condition(res, path)
                    if not counts:
                        continue
                    if rank is not None:
                        ms.append(rank)
                        ms_conditions.add(_key(item))
                elif rtype == "ResearchSubject":
                    for spath, ref in _study_refs(records, item):
                        if ref is not None and ref.key and records.resolve(ref) is None:
                            issues.append(Issue(spath, f"dangling reference to {ref.key}",
                                                IssueKind.DANGLING_REFERENCE, item.source))
                    if subject_statuses(res, path) & set(self.trial_policy.enrolled_subject_status):
                        enrolled.extend(ref.key for _, ref in _study_refs(records, item) if ref and ref.key)
                elif rtype == "Procedure":
                    status = _status(res, path)
                    if status in self.policy.procedure_excluded_status:
                        continue
                    performed = None
                    for key in ("performedDateTime", "occurrenceDateTime"):
                        performed = performed or as_str(res.get(key), f"{path}.{key}")
                    for key in ("performedPeriod", "occurrencePeriod"):
                        period = as_obj(res.get(key), f"{path}.{key}")
                        performed = performed or (period or {}).get("start")
                    fields, _ = self.venous_fields(records, item, issues)
                    procedures.append({"kind": "procedure", "ref": _key(item), "patient": group.patient,
                                       "status": status, "performed": performed, **fields})
                elif rtype == "ServiceRequest":
                    if not self.order_counts(res, path):
                        continue
                    if records.targets is None or _key(item) in records.targets:
                        pending.append(item)
            except ShapeError as exc:
                issues.append(Issue(exc.path, exc.message, IssueKind.MALFORMED, item.source))

        orders: list[Fact] = []
        for item in pending:
            res, path = item.resource, item.path
            try:
                fields, reason = self.venous_fields(records, item, issues)
                requester, requester_display = self.requester(records, item)
                fact = {"kind": "order", "ref": _key(item), "patient": group.patient, "status": _status(res, path),
                        "authored": as_str(res.get("authoredOn"), f"{path}.authoredOn"),
                        "requester": requester, "requester_display": requester_display,
                        **fields, **self.trial(records, item, enrolled, issues)}
            except ShapeError as exc:
                issues.append(Issue(exc.path, exc.message, IssueKind.MALFORMED, item.source))
                continue
            rank = self.ms_rank(reason)  # the order's own reason is MS evidence too
            if rank is not None:
                ms.append(rank)
            orders.append(fact)
            out.orders[fact["ref"]] = item

        best = min(ms, default=None)
        patient_fact = {
            "kind": "patient",
            "ref": group.patient or "Patient/unknown",
            "ms": "yes" if ms else "no",
            "ms_subtype": best[1] if best else "none",
            "ms_conditions": " ".join(sorted(ms_conditions)) or None,
        }
        out.facts = [patient_fact, *sorted(procedures, key=lambda f: f["ref"]), *orders]
        return out
