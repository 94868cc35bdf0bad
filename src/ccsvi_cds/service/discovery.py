"""The services this CDS Hooks endpoint offers, and its discovery document: all of it from the running pack
(ids, titles, hooks, descriptions in pack.yaml; prefetch derived from what the rules read)."""

from __future__ import annotations

from typing import Any

from ccsvi_cds.rulepack.model import ServiceSpec

from .state import ActiveRules

PACK_EXTENSION = "org.ccsvi-cds.rule-pack"


def services_of(active: ActiveRules | None) -> dict[str, ServiceSpec]:
    return active.services if active is not None else {}


def _usage(searched: tuple[str, ...], by_reference: frozenset[str]) -> str:
    text = f"Reads the patient's {', '.join(searched)} (prefetch, or from fhirServer with fhirAuthorization)"
    if by_reference:
        text += f", and any {', '.join(sorted(by_reference))} they reference"
    return text + "."


def discovery_document(active: ActiveRules | None) -> dict[str, Any]:
    services: list[dict[str, Any]] = []
    if active is None:
        return {"services": services}
    requirements = active.evaluator.requirements
    for service in active.pack.manifest.services:
        services.append({
            "hook": service.hook,
            "title": service.title,
            "description": service.description,
            "id": service.id,
            "prefetch": active.prefetch_templates,
            "usageRequirements": _usage(requirements.patient_searches, requirements.by_reference),
            "extension": {PACK_EXTENSION: active.identity},
        })
    return {"services": services}
