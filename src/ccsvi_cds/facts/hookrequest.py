"""Which resources and which orders a CDS Hooks request asks about.

order-select: the `selections` among the draft orders; order-sign: every draft order. Prefetch values that
carry no data (null, OperationOutcome) are skipped here: deciding to fetch them is the service's job.
"""

from __future__ import annotations

from typing import Any

from ccsvi_cds.facts.fhir import Located


def resources_from_hook_request(request: dict[str, Any]) -> tuple[list[Located], set[str] | None]:
    context = request.get("context") or {}
    located: list[Located] = []
    draft = context.get("draftOrders")
    if isinstance(draft, dict):
        located.append(Located("context.draftOrders", draft))
    for key, value in sorted((request.get("prefetch") or {}).items()):
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            located.append(Located(f"prefetch.{key}", value))
    selections = context.get("selections")
    targets = {s for s in selections if isinstance(s, str)} if isinstance(selections, list) else None
    return located, targets
