"""Codings compared by what they mean, not by how an EHR happened to spell them.

Pure functions, memoised: clinical data repeats the same few systems and codes endlessly.

- `canonical_system`: the FHIR canonical URI of a code system, whatever its spelling: `https://` for `http://`,
  a trailing slash, letter case, the HL7 OID (`urn:oid:2.16.840.1.113883.6.96` or bare), a SNOMED CT
  edition/version URI (`http://snomed.info/sct/731000124108/version/20230301`), an ICD-11 release URI
  (`http://id.who.int/icd/release/11/2024-01/mms`). Unknown systems come back stripped, otherwise unchanged.
- `normalize_code`: ICD codes without regard to case, surrounding spaces or the dot (`g35.a`, `G35A`,
  ` G35.A ` are `G35.A`); ICD-11 postcoordination (`8A40.0&XT...`, `8A40.0/...`) is read as its stem code;
  other systems' codes are stripped (CPT and ICD-10-PCS also upper-cased).
- `code_filter`: a ValueSet `compose.include.filter` as a predicate on normalised codes, where it can be
  decided without a terminology server (an ICD code family by prefix, a `regex`); None otherwise (SNOMED CT
  `is-a` needs the hierarchy: there the pinned expansion is what counts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD11 = "http://id.who.int/icd/release/11/mms"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
LOINC = "http://loinc.org"

CANONICAL = (SNOMED, ICD10CM, ICD10, ICD11, CPT, ICD10PCS, LOINC)

# HL7 OIDs (policy.md, Clarifications). ICD-11 has no HL7 OID we could confirm: none is listed.
_OIDS = {
    "2.16.840.1.113883.6.96": SNOMED,
    "2.16.840.1.113883.6.90": ICD10CM,
    "2.16.840.1.113883.6.3": ICD10,
    "2.16.840.1.113883.6.12": CPT,
    "2.16.840.1.113883.6.4": ICD10PCS,
    "2.16.840.1.113883.6.1": LOINC,
}

# lower-cased, scheme-less, without trailing slash -> canonical
_ALIASES = {uri.lower().split("://", 1)[1]: uri for uri in CANONICAL}
_SNOMED_EDITION = re.compile(r"snomed\.info/sct/\d+(?:/version/\d{8})?")
_ICD11_RELEASE = re.compile(r"id\.who\.int/icd/release/11/\d{4}-\d{2}/mms")

ICD_SYSTEMS = {ICD10CM: 3, ICD10: 3, ICD11: 4}  # system -> length of the category before the dot
UPPER_SYSTEMS = {CPT, ICD10PCS}

CACHE = 8192


@lru_cache(maxsize=CACHE)
def canonical_system(system: str) -> str:
    """The canonical URI of `system`; unknown systems stripped of surrounding spaces, nothing else."""
    stripped = system.strip()
    key = stripped.lower()
    if key.startswith("urn:oid:"):
        return _OIDS.get(key.removeprefix("urn:oid:"), stripped)
    if key in _OIDS:
        return _OIDS[key]
    scheme, sep, rest = key.partition("://")
    if not sep or scheme not in ("http", "https"):
        return stripped
    rest = rest.rstrip("/")
    if rest.startswith("www.snomed.info/"):
        rest = rest.removeprefix("www.")
    found = _ALIASES.get(rest)
    if found is not None:
        return found
    if _SNOMED_EDITION.fullmatch(rest):
        return SNOMED
    if _ICD11_RELEASE.fullmatch(rest):
        return ICD11
    return stripped


@lru_cache(maxsize=CACHE)
def normalize_code(system: str, code: str) -> str:
    """`code` as the value sets spell it, for a canonical `system` (see the module docstring)."""
    code = code.strip()
    category = ICD_SYSTEMS.get(system)
    if category is None:
        return code.upper() if system in UPPER_SYSTEMS else code
    code = code.upper()
    if system == ICD11:
        code = re.split(r"[&/]", code, maxsplit=1)[0].strip()
        if code.startswith("X"):  # extension codes have no dot
            return code
    flat = re.sub(r"[\s.]", "", code)
    return f"{flat[:category]}.{flat[category:]}" if len(flat) > category else flat


@lru_cache(maxsize=CACHE)
def canonical_coding(system: str, code: str) -> tuple[str, str]:
    """(canonical system, normalised code): the form value sets are compiled to and codings looked up in."""
    canonical = canonical_system(system)
    return canonical, normalize_code(canonical, code)


def flat(code: str) -> str:
    return code.replace(".", "")


def code_filter(system: str, prop: str, op: str, value: str) -> Callable[[str], bool] | None:
    """A compose filter as a predicate on normalised codes, or None when only a terminology server could
    decide it. `is-a` includes the concept itself, `descendent-of` does not (FHIR filter-operator)."""
    if op in ("is-a", "descendent-of") and system in ICD_SYSTEMS and prop in ("concept", "code"):
        root = flat(normalize_code(system, value))
        if op == "is-a":
            return lambda code: flat(code).startswith(root)
        return lambda code: flat(code).startswith(root) and flat(code) != root
    if op == "regex" and prop == "code":
        pattern = re.compile(value)
        return lambda code: pattern.fullmatch(code) is not None
    return None
