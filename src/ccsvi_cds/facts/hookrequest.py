"""Which resources and which orders a CDS Hooks request asks about.

order-select: the `selections` among the draft orders; order-sign: every draft order. Prefetch values that
carry no data (null, OperationOutcome) are skipped here: deciding to fetch them is the service's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ccsvi_cds.facts.fhir import Located


def is_hook_request(data: Any) -> bool:
    """A CDS Hooks request (or just its `context`, as the hook definitions' examples give it), not FHIR."""
    return isinstance(data, dict) and isinstance(data.get("context"), dict) and "resourceType" not in data


def resources_from_hook_request(request: Mapping[str, Any]) -> tuple[list[Located], set[str] | None]:
    context = request.get("context") or {}
    located: list[Located] = []
    draft = context.get("draftOrders")
    if isinstance(draft, dict):
        located.append(Located("context.draftOrders", draft))
    for key, value in sorted((request.get("prefetch") or {}).items()):
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            located.append(Located(f"prefetch.{key}", value))
    selections = context.get("selections")
    if request.get("hook") == "order-sign" or not isinstance(selections, list):
        return located, None  # order-sign judges every draft order, whatever a client adds
    targets = {s for s in selections if isinstance(s, str)}
    return located, targets
