"""Errors as FHIR OperationOutcome responses.

Every refusal the service gives a client is an OperationOutcome that says what is wrong and where
(`expression`: a FHIRPath-like path into the request JSON, e.g. `context.draftOrders.entry[2].resource`;
the diagnostics also carry the JSON pointer). Messages never echo request values: they may hold PHI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import orjson
from starlette.responses import Response

FHIR_JSON = "application/fhir+json"

Loc = Sequence[str | int]


def fhirpath(loc: Loc) -> str:
    """`("context", "draftOrders", "entry", 2)` -> `context.draftOrders.entry[2]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def json_pointer(loc: Loc) -> str:
    """RFC 6901 pointer: `("context", "draftOrders", "entry", 2)` -> `/context/draftOrders/entry/2`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


class Problem:
    """One issue of an OperationOutcome."""

    __slots__ = ("code", "loc", "message", "severity")

    def __init__(self, message: str, loc: Loc | None = None, code: str = "invalid", severity: str = "error"):
        self.message = message
        self.loc = tuple(loc) if loc is not None else None
        self.code = code
        self.severity = severity

    def to_issue(self) -> dict:
        issue: dict = {"severity": self.severity, "code": self.code}
        if self.loc:
            issue["diagnostics"] = f"{self.message} (at {json_pointer(self.loc)})"
            issue["expression"] = [fhirpath(self.loc)]
        else:
            issue["diagnostics"] = self.message
        return issue


class ServiceError(Exception):
    """An error answered with `status` and an OperationOutcome; raised anywhere below a route."""

    def __init__(self, status: int, problems: Iterable[Problem] | Problem, headers: dict[str, str] | None = None):
        self.status = status
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.headers = headers or {}
        super().__init__("; ".join(p.message for p in self.problems))


def operation_outcome(problems: Iterable[Problem]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [p.to_issue() for p in problems]}


def outcome_response(status: int, problems: Iterable[Problem], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(operation_outcome(problems)), status_code=status, media_type=FHIR_JSON,
                    headers=headers)


def error_response(exc: ServiceError) -> Response:
    return outcome_response(exc.status, exc.problems, exc.headers)
