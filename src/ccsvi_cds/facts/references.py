"""The one reader of FHIR references, for every surface.

A reference may be relative (`Condition/1`), absolute (`https://ehr/fhir/Condition/1`), versioned
(`.../_history/2`), a `urn:uuid:` resolved through a Bundle's fullUrl, a fragment (`#c1`) naming a resource
contained in the referring one, or conditional (`Practitioner?identifier=...`). Each becomes a `Ref` whose
`key` is where the resource sits in the input ("Type/id", or "Type/id#c1" for a contained one); a
conditional or logical reference has no key by design: it is not an error, there is nothing to follow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Any, NamedTuple

_REF = re.compile(r"^(?:(?P<base>[a-z][a-z0-9+.-]*://[^?#]*?)/)?(?P<key>[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})"
                  r"(?:/_history/[^/?#]+)?/?$")


class RefForm(str, Enum):
    RELATIVE = "relative"
    ABSOLUTE = "absolute"
    URN = "urn"  # urn:uuid / urn:oid, meaningful only through a Bundle's fullUrl
    CONTAINED = "contained"
    CONDITIONAL = "conditional"  # a search: resolvable by a server, never by us
    UNREADABLE = "unreadable"  # none of the above (e.g. "Patient/" or free text)


class Ref(NamedTuple):
    """A reference as read (a tuple: millions are made in an audit)."""

    text: str
    form: RefForm
    key: str | None  # "Type/id" or "Type/id#cid": where the target sits in the input
    url: str | None = None  # an absolute URL to read it from (only for ABSOLUTE references)

    @property
    def followable(self) -> bool:
        """A reference that should resolve in complete data: missing means dangling."""
        return self.key is not None


def read_reference(text: str, aliases: Mapping[str, str] | None = None, container: str | None = None) -> Ref:
    """Read one `Reference.reference` string. `container`: the key of the resource holding it (for `#id`)."""
    return Ref(text, *_read(text, aliases, container))


def reference_key(text: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """`read_reference(text, aliases).key` without building a Ref: the audit asks this of every record."""
    return _read(text, aliases, None)[1]


def _read(text: str, aliases: Mapping[str, str] | None, container: str | None) -> tuple[RefForm, str | None, str | None]:
    """(form, key, url) of a reference: plain tuples and Enum members looked up once, as this runs for every
    reference of every record of an audit."""
    head, sep, tail = text.partition("/")  # first the common case, "Type/id" and nothing else: its own key
    if sep and head[:1].isupper() and tail and "/" not in tail and "?" not in tail and ":" not in head \
            and not (aliases and text in aliases):
        return _RELATIVE, text, None
    if text.startswith("#"):
        if container is None:
            return _CONTAINED, None, None
        return _CONTAINED, container if text == "#" else f"{container.split('#', 1)[0]}{text}", None
    if aliases and text in aliases:
        if text.startswith("urn:"):
            return _URN, aliases[text], None
        return _ABSOLUTE, aliases[text], text
    if text.startswith("urn:"):
        return _URN, None, None
    if "?" in text:
        return _CONDITIONAL, None, None
    m = _REF.match(text)
    if m is None:
        return _UNREADABLE, None, None
    if m.group("base"):
        return _ABSOLUTE, m.group("key"), text
    return _RELATIVE, m.group("key"), None


# Enum members as module constants: looking one up on its class costs a descriptor call each time.
_RELATIVE, _ABSOLUTE, _URN, _CONTAINED, _CONDITIONAL, _UNREADABLE = (
    RefForm.RELATIVE, RefForm.ABSOLUTE, RefForm.URN, RefForm.CONTAINED, RefForm.CONDITIONAL, RefForm.UNREADABLE)


def normalize_reference(ref: Any, aliases: Mapping[str, str] | None = None) -> str | None:
    """'Type/id' of a reference string outside any container; None when it has none."""
    if not ref or not isinstance(ref, str):
        return None
    found = read_reference(ref, aliases)
    return found.key if found.form is not RefForm.CONTAINED else None


def rewrite_references(node: Any, full_urls: Mapping[str, str]) -> None:
    """Rewrite, in place, every `reference` that `full_urls` resolves: once a resource leaves its Bundle
    (e.g. spilled by the audit), a `urn:uuid` reference means nothing."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in full_urls:
            node["reference"] = full_urls[ref]
        for v in node.values():
            if isinstance(v, (dict, list)):
                rewrite_references(v, full_urls)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, (dict, list)):
                rewrite_references(v, full_urls)
