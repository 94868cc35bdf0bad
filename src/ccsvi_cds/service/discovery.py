"""The services this CDS Hooks endpoint offers, and its discovery document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .prefetch import PREFETCH_TEMPLATES
from .state import ActiveRules

PACK_EXTENSION = "org.ccsvi-cds.rule-pack"


@dataclass(frozen=True)
class ServiceDef:
    id: str
    hook: str
    title: str
    description: str


_DESCRIPTION = (
    "Checks draft orders for venous angioplasty or stenting of the extracranial cerebrospinal veins "
    "('liberation therapy' for CCSVI) in patients with multiple sclerosis: not recommended outside an "
    "ethics-approved trial."
)

SERVICES: dict[str, ServiceDef] = {
    s.id: s
    for s in (
        ServiceDef("ccsvi-order-select", "order-select", "CCSVI venous procedure check (order selection)",
                   _DESCRIPTION + " Evaluates only the selected orders."),
        ServiceDef("ccsvi-order-sign", "order-sign", "CCSVI venous procedure check (order signing)",
                   _DESCRIPTION + " Evaluates all draft orders."),
    )
}

USAGE = ("Needs the patient's Conditions, Procedures and ResearchSubjects (prefetch or read from fhirServer "
         "with fhirAuthorization); orders may link a trial with the workflow-researchStudy extension.")


def discovery_document(active: ActiveRules | None) -> dict[str, Any]:
    services = []
    for service in SERVICES.values():
        entry: dict[str, Any] = {
            "hook": service.hook,
            "title": service.title,
            "description": service.description,
            "id": service.id,
            "prefetch": dict(PREFETCH_TEMPLATES),
            "usageRequirements": USAGE,
        }
        if active is not None:
            entry["extension"] = {PACK_EXTENSION: active.identity}
        services.append(entry)
    return {"services": services}
