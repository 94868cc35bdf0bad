"""FHIR reference normalisation for the batch audit.

Records from different files (or servers) spell the same reference differently: ``Patient/1``,
``https://ehr.example/fhir/Patient/1/_history/3``, or ``urn:uuid:...`` resolved through a Bundle's
``fullUrl``. The per-patient join needs one spelling, ``Type/id``, or two records of one patient would land
in different groups and a finding would be missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ccsvi_cds.facts.extract import RESEARCH_STUDY_EXT, patient_of
from ccsvi_cds.facts.fhir import ShapeError, normalize_reference

# The evaluator's own normalisation, so that the audit's join and the rules' reference resolution can never
# disagree; ``urn:`` references resolve through the Bundle's fullUrl map.
normalise = normalize_reference


def ref_of(value: Any) -> str | None:
    """Normalise a FHIR Reference element (a dict with ``reference``); anything else gives None."""
    if isinstance(value, dict):
        return normalise(value.get("reference"))
    return None


def rewrite_references(node: Any, full_urls: Mapping[str, str]) -> None:
    """Rewrite, in place, every ``reference`` that ``full_urls`` resolves (urn:uuid / absolute fullUrls).

    Only needed for Bundle entries: once a resource leaves its Bundle, a ``urn:uuid`` reference means nothing.
    """
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in full_urls:
            node["reference"] = full_urls[ref]
        for v in node.values():
            if isinstance(v, (dict, list)):
                rewrite_references(v, full_urls)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, (dict, list)):
                rewrite_references(v, full_urls)


# Resources the join keeps, with the element naming their patient.
PATIENT_KEYED: dict[str, tuple[str, ...]] = {
    "ServiceRequest": ("subject",),
    "Condition": ("subject",),
    "Procedure": ("subject",),
    "ResearchSubject": ("individual", "subject"),  # R4 individual, R5 subject
}
# Resources that are not patient-keyed but needed by some patient groups: kept in small side tables.
SIDE_TYPES = frozenset({"ResearchStudy", "Organization", "Practitioner", "PractitionerRole"})


def patient_key(resource: dict[str, Any]) -> str | None:
    """The ``Patient/id`` a resource belongs to for the join, exactly as the evaluator groups it; None when
    it is not patient-keyed or names no readable patient."""
    try:
        return patient_of(resource, str(resource.get("resourceType")), {})
    except ShapeError:
        return None


def study_refs(resource: Mapping[str, Any]) -> list[str]:
    """ResearchStudy references of a ServiceRequest (workflow-researchStudy) or ResearchSubject (study)."""
    out: list[str] = []
    rtype = resource.get("resourceType")
    if rtype == "ResearchSubject":
        r = ref_of(resource.get("study"))
        if r:
            out.append(r)
    elif rtype == "ServiceRequest":
        for ext in resource.get("extension") or ():
            if isinstance(ext, dict) and ext.get("url") == RESEARCH_STUDY_EXT:
                r = ref_of(ext.get("valueReference"))
                if r:
                    out.append(r)
    return [r for r in out if r.startswith("ResearchStudy/")]
