"""What can be wrong with FHIR input, as a typed kind every shell can act on without parsing messages."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class IssueKind(str, Enum):
    MALFORMED = "malformed"  # an element has the wrong JSON shape (FHIR path says where)
    NOT_A_RESOURCE = "not-a-resource"  # no resourceType, or a Bundle entry without a resource
    MISSING_ID = "missing-id"  # a resource the rules read has no id, so it cannot be referenced or reported
    DUPLICATE_ID = "duplicate-id"  # the same Type/id twice with different content: the later one was kept
    DANGLING_REFERENCE = "dangling-reference"  # a reference the rules follow names nothing in the input
    UNKNOWN_SELECTION = "unknown-selection"  # an order-select selection names no draft order
    INVALID_FHIR = "invalid-fhir"  # full fhir.resources validation failed (only when asked for)


@dataclass(frozen=True)
class Issue:
    """One problem, located by FHIR path. `source` is the shell's own handle on the record (e.g. the audit's
    file/line row), carried through untouched so a shell never has to parse the path back."""

    path: str
    message: str
    kind: IssueKind = IssueKind.MALFORMED
    source: object = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
