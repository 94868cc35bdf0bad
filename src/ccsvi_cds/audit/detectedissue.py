"""Findings as FHIR R4 DetectedIssue resources, so that an audit's findings can be loaded into a FHIR server.

Built from a finding line exactly as findings.ndjson has it (never by re-reading the input): the rule's
indicator gives the severity, the ServiceRequest is ``implicated``, the facts that fired the rule are the
``evidence``, the card's summary the ``detail`` and its suggestions the ``mitigation``s. The id is derived
from rule and order, so the same finding has the same id in every audit (a re-load updates, never duplicates).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

RULE_SYSTEM = "urn:ccsvi-cds:rule"
FINDING_SYSTEM = "urn:ccsvi-cds:finding"
SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}  # card indicator -> DetectedIssue
_NAMESPACE = uuid.UUID("0b7e9f0e-6a55-4c59-a3c1-6b8d0f1f6f2e")


def _refs(matched: Any) -> list[str]:
    """The distinct references of the matched facts, in the facts' order."""
    out: list[str] = []
    for fact in (matched or {}).values() if isinstance(matched, Mapping) else ():
        ref = fact.get("ref") if isinstance(fact, Mapping) else None
        if isinstance(ref, str) and "/" in ref and ref not in out:
            out.append(ref)
    return out


def detected_issue(finding: Mapping[str, Any]) -> dict[str, Any]:
    """One DetectedIssue for one finding line (see findings.ndjson)."""
    rule, order = finding["rule"], finding["serviceRequest"]
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": str(uuid.uuid5(_NAMESPACE, f"{rule}|{order}|{finding.get('patient')}")),
        "identifier": [{"system": FINDING_SYSTEM, "value": f"{rule}|{order}"}],
        "status": "final",
        "code": {"coding": [{"system": RULE_SYSTEM, "code": rule}], "text": finding.get("summary") or rule},
        "severity": SEVERITY.get(finding.get("indicator", ""), "low"),
        "implicated": [{"reference": order}],
        "detail": finding.get("summary") or rule,
    }
    patient = finding.get("patient")
    if isinstance(patient, str) and patient.startswith("Patient/"):
        issue["patient"] = {"reference": patient}
    evidence = [r for r in _refs(finding.get("matched")) if r != order]
    if evidence:
        issue["evidence"] = [{"detail": [{"reference": r} for r in evidence]}]
    card = finding.get("card") or {}
    source = card.get("source")
    if isinstance(source, Mapping) and isinstance(source.get("url"), str) and source["url"]:
        issue["reference"] = source["url"]  # the authority for the issue: the card's source
    mitigations = [{"action": {"text": s["label"]}} for s in card.get("suggestions") or ()
                   if isinstance(s, Mapping) and isinstance(s.get("label"), str) and s["label"]]
    if mitigations:
        issue["mitigation"] = mitigations
    return issue
