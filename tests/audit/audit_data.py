"""Small hand-made FHIR resources and file writers for the audit tests (codes from terminology.md)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
JUGULAR = [{"coding": [{"system": SCT, "code": "12123001", "display": "Internal jugular vein"}]}]


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female"}


def ms(cid: str, subject: str, verification: str = "confirmed") -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject},
            "verificationStatus": {"coding": [{"code": verification}]},
            "code": {"coding": [{"system": SCT, "code": "24700007", "display": "Multiple sclerosis"}]}}


def jugular_angioplasty(sid: str, subject: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": sid, "status": status, "intent": "order",
            "code": {"coding": [{"system": CPT, "code": "37248"}], "text": "Jugular vein angioplasty"},
            "bodySite": JUGULAR, "subject": {"reference": subject}, "authoredOn": "2011-03-04",
            "requester": {"reference": "Practitioner/dr-1"}, **extra}


def mri(sid: str, subject: str) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": sid, "status": "active", "intent": "order",
            "code": {"text": "MRI brain"}, "subject": {"reference": subject}, "authoredOn": "2012-01-01"}


def study(sid: str, status: str) -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "id": sid, "status": status}


def linked_to(sid: str) -> dict[str, Any]:
    return {"extension": [{"url": STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{sid}"}}]}


def write_ndjson(path: Path, resources: list[Any], gz: bool = False) -> Path:
    data = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in resources)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_bundle(path: Path, resources: list[dict[str, Any]], urn: bool = True) -> Path:
    """A collection Bundle; with ``urn``, resources get urn:uuid fullUrls and references use them."""
    entries = []
    urls = {}
    for i, r in enumerate(resources):
        full = f"urn:uuid:00000000-0000-4000-8000-{i:012d}" if urn else f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}"
        urls[f"{r['resourceType']}/{r['id']}"] = full
        entries.append({"fullUrl": full, "resource": r})
    raw = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).decode()
    for ref, full in urls.items():  # point references at the fullUrls, as EHR bundles do
        raw = raw.replace(f'"reference":"{ref}"', f'"reference":"{full}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw)
    return path


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
