"""Project FHIR resources onto the flat facts of facts/schema.py, one group per patient.

Pure: located resources and a pack in, facts and issues out. A malformed resource becomes an `Issue` with
its FHIR path and is skipped; the rest of the input is still evaluated.
"""

from __future__ import annotations

from collections.abc import Collection
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
    ref_of,
    reference,
)
from ccsvi_cds.rulepack.model import TrialPolicy

RESEARCH_STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
RELEVANT = {"ServiceRequest", "Condition", "Procedure", "Patient", "ResearchSubject", "ResearchStudy"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
SUBTYPE_RANK = {"ms-progressive": 3, "ms-relapsing-remitting": 2, "ms": 1}
SUBTYPE_NAME = {"ms-progressive": "progressive", "ms-relapsing-remitting": "relapsing-remitting", "ms": "unspecified"}


@dataclass(frozen=True)
class Issue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class PatientGroup:
    """Everything known about one patient, and the facts projected from it."""

    patient: str | None
    resources: list[Located] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, Located] = field(default_factory=dict)

    def fact(self, ref: str) -> dict[str, Any] | None:
        return next((f for f in self.facts if f.get("ref") == ref), None)


def patient_of(resource: Resource, path: str, aliases: dict[str, str]) -> str | None:
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return ref_of(resource)
    if rtype == "ResearchSubject":
        key = "subject" if "subject" in resource else "individual"
        return reference(resource.get(key), f"{path}.{key}", aliases)
    if rtype in ("ServiceRequest", "Condition", "Procedure"):
        return reference(resource.get("subject"), f"{path}.subject", aliases)
    return None


def group_by_patient(located: list[Located], aliases: dict[str, str], default_patient: str | None,
                     issues: list[Issue]) -> tuple[dict[str | None, PatientGroup], dict[str, Located]]:
    """Patient groups, plus every resource by ref (ResearchStudy and explicitly referenced ones resolve there)."""
    groups: dict[str | None, PatientGroup] = {}
    shared: dict[str, Located] = {}
    for item in located:
        res = item.resource
        rtype = res.get("resourceType")
        if "__invalid__" in res:
            issues.append(Issue(item.path, res["__invalid__"]))
            continue
        if not isinstance(rtype, str):
            issues.append(Issue(item.path, "not a FHIR resource: resourceType is missing"))
            continue
        if rtype not in RELEVANT:
            continue
        if not isinstance(res.get("id"), str) or not res["id"]:
            issues.append(Issue(f"{item.path}.id", f"{rtype} without an id cannot be referenced or reported"))
            continue
        shared[f"{rtype}/{res['id']}"] = item  # resolvable by explicit reference from any group
        if rtype == "ResearchStudy":
            continue
        try:
            patient = patient_of(res, item.path, aliases) or default_patient
        except ShapeError as exc:
            issues.append(Issue(exc.path, exc.message))
            continue
        groups.setdefault(patient, PatientGroup(patient)).resources.append(item)
    return groups, shared


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


class _Context:
    """What a patient's facts are computed against: classifiers, trial policy, resolvable resources."""

    def __init__(self, classify: Classifiers, trial: TrialPolicy, aliases: dict[str, str],
                 by_ref: dict[str, Located]) -> None:
        self.classify = classify
        self.policy = trial
        self.aliases = aliases
        self.by_ref = by_ref

    def reasons(self, resource: Resource, path: str) -> Coded:
        """Reason codes and texts: R4 reasonCode/reasonReference, R5 reason (CodeableReference), notes."""
        coded = Coded()
        coded.add_concepts(resource.get("reasonCode"), f"{path}.reasonCode")
        refs: list[tuple[Any, str]] = [
            (r, f"{path}.reasonReference[{k}]")
            for k, r in enumerate(as_list(resource.get("reasonReference"), f"{path}.reasonReference"))
        ]
        for k, item in enumerate(as_list(resource.get("reason"), f"{path}.reason")):
            ipath = f"{path}.reason[{k}]"
            item = as_obj(item, ipath) or {}
            coded.add_concept(item.get("concept"), f"{ipath}.concept")
            if "reference" in item:
                refs.append((item["reference"], f"{ipath}.reference"))
        for value, rpath in refs:
            target = reference(value, rpath, self.aliases)
            found = self.by_ref.get(target or "")
            if found is not None and found.resource.get("resourceType") == "Condition":
                coded.add_concept(found.resource.get("code"), f"{found.path}.code")
            elif isinstance(value, dict):
                coded.add_text(value.get("display"), f"{rpath}.display")
        for k, note in enumerate(as_list(resource.get("note"), f"{path}.note")):
            coded.add_text((as_obj(note, f"{path}.note[{k}]") or {}).get("text"), f"{path}.note[{k}].text")
        return coded

    def procedure_parts(self, resource: Resource, path: str) -> tuple[Coded, Coded, Coded]:
        """(what is done, where it is done, why) for a ServiceRequest or a Procedure."""
        what = Coded()
        code = resource.get("code")
        if isinstance(code, dict) and "concept" in code:  # R5 ServiceRequest.code: CodeableReference
            what.add_concept(code.get("concept"), f"{path}.code.concept")
        else:
            what.add_concept(code, f"{path}.code")
        where = Coded()
        where.add_concepts(resource.get("bodySite"), f"{path}.bodySite")
        where.extend(what)
        why = self.reasons(resource, path)
        why.add_text(resource.get("patientInstruction") if isinstance(resource.get("patientInstruction"), str)
                     else None, f"{path}.patientInstruction")
        why.texts.extend(what.texts)
        return what, where, why

    def venous_fields(self, resource: Resource, path: str) -> dict[str, Any]:
        what, where, why = self.procedure_parts(resource, path)
        return {
            "procedure": self.classify("procedure", what),
            "site": self.classify("site", where),
            "vessel": self.classify("vessel", where),
            "reason": self.classify("reason", why),
            "text": "; ".join(dict.fromkeys(what.texts + [d for _, d in what.codings if d]))[:200] or None,
        }

    def trial(self, order: Resource, path: str, enrolled_studies: list[str]) -> dict[str, Any]:
        linked: list[str] = []
        for epath, ext in iter_extensions(order, path, RESEARCH_STUDY_EXT):
            target = reference(ext.get("valueReference"), f"{epath}.valueReference", self.aliases)
            if target:
                linked.append(target)
        candidates = list(dict.fromkeys(linked + enrolled_studies))
        if not candidates:
            return {"trial": "none", "study": None, "study_status": None, "study_title": None}
        statuses = []
        for study in candidates:
            found = self.by_ref.get(study)
            status = study_status(found.resource, found.path) if found else "unknown"
            title = as_str(found.resource.get("title"), f"{found.path}.title") if found else None
            statuses.append((study, status, title[:120] if title else None))
        approved = [s for s in statuses if s[1] in self.policy.approved_study_status]
        study, status, title = (approved or statuses)[0]
        return {"trial": "approved" if approved else "not-approved", "study": study, "study_status": status,
                "study_title": title}


def _requester(order: Resource, path: str, aliases: dict[str, str]) -> str | None:
    requester = as_obj(order.get("requester"), f"{path}.requester")
    if not requester:
        return None
    ref = reference(requester, f"{path}.requester", aliases)
    display = as_str(requester.get("display"), f"{path}.requester.display")
    if ref and display:
        return f"{ref} ({display})"
    return ref or display


def project_group(group: PatientGroup, shared: dict[str, Located], aliases: dict[str, str],
                  classify: Classifiers, trial: TrialPolicy, targets: Collection[str] | None,
                  issues: list[Issue]) -> None:
    """Fill `group.facts` (patient fact first) and `group.orders` (the orders to evaluate).

    `shared` resolves references: it holds every resource of the input by "Type/id".
    """
    by_ref = shared
    ctx = _Context(classify, trial, aliases, by_ref)

    ms_conditions: list[tuple[int, str, str]] = []
    enrolled: list[str] = []
    procedures: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    pending_orders: list[Located] = []
    for item in group.resources:
        res, path = item.resource, item.path
        rtype = res["resourceType"]
        try:
            if rtype == "Condition":
                verification = _concept_code(res.get("verificationStatus"), f"{path}.verificationStatus")
                if verification in EXCLUDED_VERIFICATION:
                    continue
                coded = Coded()
                coded.add_concept(res.get("code"), f"{path}.code")
                kind = classify("condition", coded)
                if kind in SUBTYPE_RANK:
                    ms_conditions.append((SUBTYPE_RANK[kind], kind, f"Condition/{res['id']}"))
            elif rtype == "ResearchSubject":
                if subject_statuses(res, path) & set(trial.enrolled_subject_status):
                    study = reference(res.get("study"), f"{path}.study", aliases)
                    if study:
                        if study not in by_ref:
                            issues.append(Issue(f"{path}.study", f"dangling reference to {study}"))
                        enrolled.append(study)
            elif rtype == "Procedure":
                status = _status(res, path)
                if status == "entered-in-error":
                    continue
                performed = None
                for key in ("performedDateTime", "occurrenceDateTime"):
                    performed = performed or as_str(res.get(key), f"{path}.{key}")
                for key in ("performedPeriod", "occurrencePeriod"):
                    period = as_obj(res.get(key), f"{path}.{key}")
                    performed = performed or (period or {}).get("start")
                procedures.append({"kind": "procedure", "ref": f"Procedure/{res['id']}", "patient": group.patient,
                                   "status": status, "performed": performed, **ctx.venous_fields(res, path)})
            elif rtype == "ServiceRequest":
                ref = f"ServiceRequest/{res['id']}"
                if _status(res, path) == "entered-in-error":
                    continue
                if targets is None or ref in targets:
                    pending_orders.append(item)
        except ShapeError as exc:
            issues.append(Issue(exc.path, exc.message))

    for item in pending_orders:
        res, path = item.resource, item.path
        try:
            fact = {"kind": "order", "ref": f"ServiceRequest/{res['id']}", "patient": group.patient,
                    "status": _status(res, path), "authored": as_str(res.get("authoredOn"), f"{path}.authoredOn"),
                    "requester": _requester(res, path, aliases),
                    **ctx.venous_fields(res, path), **ctx.trial(res, path, enrolled)}
            if fact["study"] and fact["study"] not in by_ref:
                issues.append(Issue(path, f"dangling reference to {fact['study']}: its status cannot be confirmed"))
        except ShapeError as exc:
            issues.append(Issue(exc.path, exc.message))
            continue
        orders.append(fact)
        group.orders[fact["ref"]] = item

    best = max(ms_conditions, default=None)
    patient_fact = {
        "kind": "patient",
        "ref": group.patient or "Patient/unknown",
        "ms": "yes" if ms_conditions else "no",
        "ms_subtype": SUBTYPE_NAME[best[1]] if best else "none",
        "ms_conditions": " ".join(sorted({c for _, _, c in ms_conditions})) or None,
    }
    group.facts = [patient_fact, *sorted(procedures, key=lambda f: f["ref"]), *orders]
