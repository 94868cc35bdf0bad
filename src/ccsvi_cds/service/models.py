"""Pydantic models of what crosses the service boundary: hook requests and feedback.

They check the CDS Hooks envelope and the order-hook context (the parts the service relies on) and
leave FHIR resources as dicts: the facts layer reads them and reports bad ones as issues. Unknown
fields are allowed (CDS Hooks 1.0 clients, `extension`), as the specification asks.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import Problem, ServiceError
from .fhir_client import canonical_url

NonEmpty = Field(min_length=1)
VISIBLE_ASCII = re.compile(r"[!-~]+")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Shape(BaseModel):
    """Checks the shape of what the service reads as raw JSON (the draft orders): unknown fields are allowed
    but not copied into the model, which nothing reads (a FHIR resource has many)."""

    model_config = ConfigDict(extra="ignore")


class FhirAuthorization(_Open):
    access_token: str = NonEmpty
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None

    @field_validator("access_token")
    @classmethod
    def _token(cls, value: str) -> str:
        if not VISIBLE_ASCII.fullmatch(value):  # it becomes an HTTP header: RFC 6750 b64token is ASCII
            raise ValueError("access_token must be visible ASCII characters (no spaces or control characters)")
        return value

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be 'Bearer'")
        return value


class HookRequest(_Open):
    hook: str = NonEmpty
    hookInstance: str = NonEmpty
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not UUID.fullmatch(value):  # CDS Hooks 2.0: "a universally unique identifier (UUID)"
            raise ValueError("hookInstance must be a UUID (8-4-4-4-12 hexadecimal digits)")
        return value

    @field_validator("fhirServer")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            if canonical_url(value) is None:
                raise ValueError("fhirServer must be an absolute http(s) URL of visible ASCII characters, "
                                 "without credentials, encoded slashes or a malformed escape")
            parts = urlsplit(value)
            if parts.query or parts.fragment or value.endswith(("?", "#")):
                raise ValueError("fhirServer must be a FHIR base URL, without query or fragment")
        return value


class Resource(_Shape):
    resourceType: str = NonEmpty
    id: str | None = None


class BundleEntry(_Shape):
    resource: Resource


class Bundle(_Shape):
    resourceType: Literal["Bundle"]
    entry: list[BundleEntry] = Field(default_factory=list)


class OrderContext(_Open):
    """Context of order-select and order-sign (userId may name a Practitioner or a PractitionerRole)."""

    userId: str = NonEmpty
    patientId: str = NonEmpty
    encounterId: str | None = None
    selections: list[str] | None = None
    draftOrders: Bundle


class Coding(_Open):
    code: str = NonEmpty
    system: str | None = None
    display: str | None = None


class OverrideReason(_Open):
    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(_Open):
    id: str = NonEmpty


class FeedbackItem(_Open):
    card: str = NonEmpty
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime | None = None  # required in 2.0; 1.0 clients may omit it


class FeedbackRequest(_Open):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=500)


def parse_json(body: bytes) -> Any:
    """Parse a request body; a syntax error becomes a 400 that says where (line, column)."""
    if not body.strip():
        raise ServiceError(400, Problem("request body is empty: a JSON object is expected", code="required"))
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, Problem(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                        f"column {exc.colno} (char {exc.pos})", code="structure")) from None


def validate(model: type[BaseModel], data: Any, prefix: tuple[str | int, ...] = ()) -> Any:
    """`model.model_validate(data)`, with pydantic errors turned into a 400 OperationOutcome (no input echoed)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False)[:20]:
            loc = prefix + tuple(err["loc"])
            code = "required" if err["type"] == "missing" else "value" if err["type"] != "model_type" else "structure"
            problems.append(Problem(err["msg"], loc, code))
        raise ServiceError(400, problems) from None
