"""Small builders for FHIR JSON used by the core tests: realistic shapes, minimal noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

SCT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD11 = "http://id.who.int/icd/release/11/mms"
CPT = "http://www.ama-assn.org/go/cpt"
PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
LOINC = "http://loinc.org"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"

PATIENT = "pt-1"
IJV = {"coding": [{"system": SCT, "code": "12123001", "display": "Internal jugular vein"}]}


def concept(system: str | None = None, code: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if system and code:
        out["coding"] = [{"system": system, "code": code}]
    if text:
        out["text"] = text
    return out


def patient(pid: str = PATIENT) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1980-01-01"}


def condition(system: str | None = SCT, code: str | None = "24700007", *, cid: str = "c1", text: str | None = None,
              verification: str | None = "confirmed", clinical: str = "active", pid: str = PATIENT) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": cid,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": clinical}]},
        "code": concept(system, code, text), "subject": {"reference": f"Patient/{pid}"},
    }
    if verification:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    return res


def order(system: str | None = CPT, code: str | None = "37248", *, sid: str = "sr1", text: str | None = None,
          body: dict[str, Any] | None = IJV, reason: list[dict[str, Any]] | None = None, status: str = "draft",
          pid: str = PATIENT, study: str | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": sid, "status": status, "intent": "order",
        "code": concept(system, code, text), "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-11-01", "requester": {"reference": "Practitioner/dr1", "display": "Dr One"},
    }
    if body is not None:
        res["bodySite"] = [body]
    if reason is not None:
        res["reasonCode"] = reason
    if study:
        res["extension"] = [{"url": STUDY_EXT, "valueReference": {"reference": study}}]
    res.update(extra)
    return res


def procedure(system: str = PCS, code: str = "057M3ZZ", *, pid: str = PATIENT, status: str = "completed",
              prid: str = "proc1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": prid, "status": status, "code": concept(system, code),
            "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": "2025-01-01", **extra}


def study(status: str, sid: str = "st1") -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "id": sid, "status": status, "title": "CCSVI venoplasty study"}


def research_subject(status: str = "on-study", study_ref: str = "ResearchStudy/st1", pid: str = PATIENT,
                     rid: str = "rs1") -> dict[str, Any]:
    return {"resourceType": "ResearchSubject", "id": rid, "status": status, "study": {"reference": study_ref},
            "individual": {"reference": f"Patient/{pid}"}}


def bundle(*resources: dict[str, Any], full_urls: list[str] | None = None) -> dict[str, Any]:
    entries = []
    for i, res in enumerate(resources):
        entry: dict[str, Any] = {"resource": res}
        if full_urls:
            entry["fullUrl"] = full_urls[i]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
