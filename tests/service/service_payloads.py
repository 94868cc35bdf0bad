"""Realistic CDS Hooks requests for the service tests and the load benchmark (R4, synthetic ids only)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

PATIENT = "pat-ms-1"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"


def concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def jugular_angioplasty(order_id: str = "sr-ijv-pta", patient: str = PATIENT, study: str | None = None) -> dict[str, Any]:
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "code": concept(CPT, "37248", "Transluminal balloon angioplasty (except dialysis circuit); initial vein"),
        "bodySite": [concept(SNOMED, "12123001", "Internal jugular vein")],
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": "Practitioner/dr-1"},
        "authoredOn": "2026-11-20",
    }
    if study:
        sr["extension"] = [{"url": STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{study}"}}]
    return sr


def mri_brain(order_id: str = "sr-mri", patient: str = PATIENT) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest", "id": order_id, "status": "draft", "intent": "order",
        "code": concept("http://loinc.org", "24590-2", "MR Brain WO and W contrast IV"),
        "subject": {"reference": f"Patient/{patient}"},
    }


def femoral_angioplasty_dialysis(order_id: str = "sr-fistula", patient: str = PATIENT) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest", "id": order_id, "status": "draft", "intent": "order",
        "code": concept(CPT, "36902", "Dialysis circuit angioplasty"),
        "subject": {"reference": f"Patient/{patient}"},
    }


def condition(cond_id: str, system: str, code: str, display: str, patient: str = PATIENT,
              status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition", "id": cond_id,
        "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status, status),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                      "confirmed", "Confirmed"),
        "code": concept(system, code, display),
        "subject": {"reference": f"Patient/{patient}"},
    }


def ms_condition(patient: str = PATIENT) -> dict[str, Any]:
    return condition("cond-ms", SNOMED, "426373005", "Relapsing remitting multiple sclerosis", patient)


def five_conditions(patient: str = PATIENT) -> list[dict[str, Any]]:
    return [
        ms_condition(patient),
        condition("cond-htn", SNOMED, "38341003", "Hypertensive disorder", patient),
        condition("cond-mig", SNOMED, "37796009", "Migraine", patient),
        condition("cond-dep", SNOMED, "35489007", "Depressive disorder", patient),
        condition("cond-vitd", ICD10, "E55.9", "Vitamin D deficiency, unspecified", patient),
    ]


def bundle(resources: list[dict[str, Any]], kind: str = "searchset", next_url: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}
    if next_url:
        b["link"] = [{"relation": "self", "url": "http://example/self"}, {"relation": "next", "url": next_url}]
    return b


def full_prefetch(patient: str = PATIENT, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "conditions": bundle(conditions if conditions is not None else five_conditions(patient)),
        "procedures": bundle([]),
        "researchSubjects": bundle([]),
    }


def order_sign(orders: list[dict[str, Any]] | None = None, prefetch: dict[str, Any] | None = None,
               patient: str = PATIENT, **extra: Any) -> dict[str, Any]:
    """The benchmark's request: 3 draft orders (one CCSVI angioplasty), 5 Conditions in prefetch."""
    req: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": patient,
            "encounterId": "enc-1",
            "draftOrders": bundle(orders if orders is not None else
                                  [jugular_angioplasty(patient=patient), mri_brain(patient=patient),
                                   femoral_angioplasty_dialysis(patient=patient)], kind="collection"),
        },
        "prefetch": prefetch if prefetch is not None else full_prefetch(patient),
    }
    req.update(extra)
    return req


def order_select(selections: list[str], **kw: Any) -> dict[str, Any]:
    req = order_sign(**kw)
    req["hook"] = "order-select"
    req["context"]["selections"] = selections
    return req


def clone(value: Any) -> Any:
    return copy.deepcopy(value)
