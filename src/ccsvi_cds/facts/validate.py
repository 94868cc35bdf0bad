"""Full FHIR validation with fhir.resources, for the places where its cost (about 0.3 ms a resource) pays.

R5-shaped resources validate against fhir.resources' R5 models, the rest against R4B (the R4 errata
release, which accepts what R4 EHRs send for the resources this product reads).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from pydantic import ValidationError

from ccsvi_cds.facts.fhir import Resource, is_r5

_MODULES = {
    "ServiceRequest": "servicerequest",
    "Condition": "condition",
    "Procedure": "procedure",
    "Patient": "patient",
    "ResearchSubject": "researchsubject",
    "ResearchStudy": "researchstudy",
}


@cache
def _model(resource_type: str, r5: bool) -> Any:
    package = "fhir.resources" if r5 else "fhir.resources.R4B"
    module = importlib.import_module(f"{package}.{_MODULES[resource_type]}")
    return getattr(module, resource_type)


def validation_errors(resource: Resource, path: str) -> list[tuple[str, str]]:
    """[(FHIR path, message)]; empty when valid or when the type is not one this product reads."""
    rtype = resource.get("resourceType")
    if rtype not in _MODULES:
        return []
    try:
        _model(rtype, is_r5(resource)).model_validate(resource)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            out.append((f"{path}{loc}", err["msg"]))
        return out
    return []
