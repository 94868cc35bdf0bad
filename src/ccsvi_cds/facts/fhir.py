"""Reading FHIR JSON elements (R4, R4B, R5) defensively: shapes, codings and texts.

Every accessor takes the FHIR path of what it reads, so a malformed element becomes a `ShapeError` that says
exactly where (e.g. `Bundle.entry[2].resource.code.coding[0]`), never an AttributeError deep inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Resource = dict[str, Any]
Coding = tuple[str, str]  # (system, code)



class ShapeError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Located:
    """A resource and the path it was read from (e.g. `prefetch.conditions.entry[3].resource`). `source`: the
    shell's own handle on the record (the audit's file/line row), carried through to issues and findings."""

    path: str
    resource: Resource
    source: object = None


def as_list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise ShapeError(path, "expected a list")


def as_obj(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    raise ShapeError(path, "expected an object")


def as_str(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    raise ShapeError(path, "expected a string")


@dataclass
class Coded:
    """What one or more CodeableConcepts say: their codings, and the texts that describe them."""

    codings: list[tuple[Coding, str]]  # ((system, code), display)
    texts: list[str]

    def __init__(self) -> None:
        self.codings, self.texts = [], []

    def add_concept(self, value: Any, path: str) -> None:
        concept = as_obj(value, path)
        if concept is None:
            return
        for k, coding in enumerate(as_list(concept.get("coding"), f"{path}.coding")):
            cpath = f"{path}.coding[{k}]"
            coding = as_obj(coding, cpath) or {}
            system = as_str(coding.get("system"), f"{cpath}.system")
            code = as_str(coding.get("code"), f"{cpath}.code")
            display = as_str(coding.get("display"), f"{cpath}.display") or ""
            if system and code:
                self.codings.append(((system, code), display))
            elif display:
                self.texts.append(display)
        text = as_str(concept.get("text"), f"{path}.text")
        if text:
            self.texts.append(text)

    def add_concepts(self, value: Any, path: str) -> None:
        for k, concept in enumerate(as_list(value, path)):
            self.add_concept(concept, f"{path}[{k}]")

    def add_text(self, text: Any, path: str) -> None:
        text = as_str(text, path)
        if text:
            self.texts.append(text)

    def extend(self, other: Coded) -> None:
        self.codings.extend(other.codings)
        self.texts.extend(other.texts)


def is_r5(resource: Resource) -> bool:
    """R5 where shapes differ: CodeableReference reasons/codes, ResearchSubject.subject, occurrence[x]."""
    rtype = resource.get("resourceType")
    if rtype == "ServiceRequest":
        code = resource.get("code")
        return "reason" in resource or (isinstance(code, dict) and "concept" in code)
    if rtype == "ResearchSubject":
        return "subject" in resource or "progress" in resource
    if rtype == "Procedure":
        return "reason" in resource or any(k.startswith("occurrence") for k in resource)
    if rtype == "ResearchStudy":
        return "progressStatus" in resource
    return False


def iter_extensions(resource: Resource, path: str, url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for k, ext in enumerate(as_list(resource.get("extension"), f"{path}.extension")):
        epath = f"{path}.extension[{k}]"
        ext = as_obj(ext, epath) or {}
        if ext.get("url") == url:
            yield epath, ext
