"""Reading FHIR JSON (R4, R4B, R5) defensively: bundles, references, codings and texts.

Every accessor takes the FHIR path of what it reads, so a malformed element becomes a `ShapeError` that says
exactly where (e.g. `Bundle.entry[2].resource.code.coding[0]`), never an AttributeError deep inside.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

Resource = dict[str, Any]
Coding = tuple[str, str]  # (system, code)

_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class ShapeError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Located:
    """A resource and the path it was read from (e.g. `prefetch.conditions.entry[3].resource`)."""

    path: str
    resource: Resource


def normalize_reference(ref: str | None, aliases: dict[str, str] | None = None) -> str | None:
    """'Type/id' for relative, absolute, versioned (_history) and urn:uuid references; None if unresolvable."""
    if not ref or not isinstance(ref, str):
        return None
    head, sep, tail = ref.partition("/")
    if sep and head[:1].isupper() and tail and "/" not in tail and ":" not in head:
        return ref  # already "Type/id": the common case, without the regex
    if ref.startswith("urn:"):
        return (aliases or {}).get(ref)
    if aliases and ref in aliases:
        return aliases[ref]
    m = _REF.search(ref)
    return f"{m.group(1)}/{m.group(2)}" if m else None


def id_from_full_url(full_url: Any) -> str | None:
    """The id a Bundle entry's resource takes when it has none: the uuid of its urn:uuid fullUrl."""
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return full_url.removeprefix("urn:uuid:")
    return None


def flatten(items: Iterable[Resource | Located | tuple[str, Resource]], origin: str = "resources") -> tuple[list[Located], dict[str, str]]:
    """Expand Bundles (recursively) into located resources; map fullUrls to 'Type/id'."""
    out: list[Located] = []
    aliases: dict[str, str] = {}

    def visit(resource: Any, path: str) -> None:
        if not isinstance(resource, dict):
            raise ShapeError(path, "expected a FHIR resource (a JSON object)")
        if resource.get("resourceType") == "Bundle":
            entries = resource.get("entry") or []
            if not isinstance(entries, list):
                raise ShapeError(f"{path}.entry", "expected a list")
            for j, entry in enumerate(entries):
                epath = f"{path}.entry[{j}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    out.append(Located(epath, {"__invalid__": "entry without a resource object"}))
                    continue
                inner = entry["resource"]
                full_url = entry.get("fullUrl")
                if isinstance(full_url, str) and isinstance(inner.get("resourceType"), str):
                    rid = inner.get("id")
                    if not rid:
                        rid = id_from_full_url(full_url)
                        inner = {**inner, "id": rid} if rid else inner
                    if rid:
                        aliases[full_url] = f"{inner['resourceType']}/{rid}"
                visit(inner, f"{epath}.resource")
            return
        out.append(Located(path, resource))

    for i, item in enumerate(items):
        if isinstance(item, Located):
            visit(item.resource, item.path)
        elif isinstance(item, tuple):
            visit(item[1], item[0])
        else:
            visit(item, f"{origin}[{i}]")
    return out, aliases


def ref_of(resource: Resource) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    return None


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


def reference(value: Any, path: str, aliases: dict[str, str]) -> str | None:
    obj = as_obj(value, path)
    if obj is None:
        return None
    return normalize_reference(as_str(obj.get("reference"), f"{path}.reference"), aliases)


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
