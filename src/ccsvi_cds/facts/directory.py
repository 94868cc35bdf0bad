"""Who ordered: names and affiliations of Practitioners, PractitionerRoles and Organizations.

Read for reports (the audit's per-requester and per-organisation tables), never by the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ccsvi_cds.facts.references import normalize_reference


@dataclass(frozen=True)
class DirectoryEntry:
    name: str | None
    practitioner: str | None  # PractitionerRole.practitioner as "Type/id"
    organization: str | None  # PractitionerRole.organization as "Type/id"


def human_name(res: Mapping[str, Any]) -> str | None:
    names = res.get("name")
    if isinstance(names, str):
        return names  # Organization.name
    for n in names if isinstance(names, list) else ():
        if isinstance(n, dict):
            if isinstance(n.get("text"), str):
                return n["text"]
            parts = [p for key in ("prefix", "given") for p in n.get(key) or () if isinstance(p, str)]
            if isinstance(n.get("family"), str):
                parts.append(n["family"])
            if parts:
                return " ".join(parts)
    return None


def _ref(value: Any) -> str | None:
    return normalize_reference(value.get("reference")) if isinstance(value, dict) else None


def directory_entry(res: Mapping[str, Any]) -> DirectoryEntry:
    if res.get("resourceType") == "PractitionerRole":
        return DirectoryEntry(None, _ref(res.get("practitioner")), _ref(res.get("organization")))
    return DirectoryEntry(human_name(res), None, None)
