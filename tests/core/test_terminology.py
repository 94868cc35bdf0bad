"""Codings compared by meaning: system spellings and ICD code forms (facts/terminology.py)."""

from __future__ import annotations

import pytest

from ccsvi_cds.facts.terminology import (
    CPT,
    ICD10,
    ICD10CM,
    ICD10PCS,
    ICD11,
    LOINC,
    SNOMED,
    canonical_coding,
    canonical_system,
    code_filter,
    normalize_code,
)


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("http://snomed.info/sct", SNOMED),
    ("https://snomed.info/sct", SNOMED),
    ("http://snomed.info/sct/", SNOMED),
    (" HTTP://SNOMED.INFO/SCT ", SNOMED),
    ("urn:oid:2.16.840.1.113883.6.96", SNOMED),
    ("2.16.840.1.113883.6.96", SNOMED),
    ("http://snomed.info/sct/731000124108/version/20230301", SNOMED),
    ("http://snomed.info/sct/900000000000207008", SNOMED),
    ("https://snomed.info/sct/32506021000036107/version/20240131/", SNOMED),
    ("urn:oid:2.16.840.1.113883.6.90", ICD10CM),
    ("https://hl7.org/fhir/sid/icd-10-cm/", ICD10CM),
    ("urn:oid:2.16.840.1.113883.6.3", ICD10),
    ("http://hl7.org/fhir/sid/icd-10", ICD10),
    ("urn:oid:2.16.840.1.113883.6.12", CPT),
    ("https://www.ama-assn.org/go/cpt", CPT),
    ("URN:OID:2.16.840.1.113883.6.4", ICD10PCS),
    ("http://www.cms.gov/medicare/coding/icd10", ICD10PCS),
    ("urn:oid:2.16.840.1.113883.6.1", LOINC),
    ("https://loinc.org/", LOINC),
    ("https://id.who.int/icd/release/11/mms", ICD11),
    ("http://id.who.int/icd/release/11/2024-01/mms", ICD11),
])
def test_system_spellings_mean_the_same_system(spelling: str, canonical: str) -> None:
    assert canonical_system(spelling) == canonical


@pytest.mark.parametrize("other", [
    "http://example.org/local-codes",
    "urn:oid:2.16.840.1.113883.6.999",
    "http://snomed.info/sct-fake",
    "http://hl7.org/fhir/sid/icd-10-cm-extra",
    "http://snomed.info/sct/abc",
    "ftp://snomed.info/sct",
])
def test_other_systems_are_not_mistaken_for_known_ones(other: str) -> None:
    assert canonical_system(other) == other


def test_an_unknown_system_is_only_stripped() -> None:
    assert canonical_system("  http://Example.org/Codes/ ") == "http://Example.org/Codes/"


@pytest.mark.parametrize(("system", "raw", "code"), [
    (ICD10CM, "g35.a", "G35.A"),
    (ICD10CM, "G35A", "G35.A"),
    (ICD10CM, " G35.A ", "G35.A"),
    (ICD10CM, "G35", "G35"),
    (ICD10CM, "G35.", "G35"),
    (ICD10CM, "g35b1", "G35.B1"),
    (ICD10, "g35", "G35"),
    (ICD11, "8a40.2", "8A40.2"),
    (ICD11, "8A402", "8A40.2"),
    (ICD11, " 8A40.Z ", "8A40.Z"),
    (ICD11, "8A40.0&XT8W", "8A40.0"),
    (ICD11, "8A40.1/8A40.2", "8A40.1"),
    (ICD10PCS, " 057m3zz", "057M3ZZ"),
    (CPT, " 37248 ", "37248"),
    (SNOMED, " 24700007\n", "24700007"),
    (LOINC, "30640-7 ", "30640-7"),
])
def test_codes_compare_without_case_spaces_or_dot(system: str, raw: str, code: str) -> None:
    assert normalize_code(system, raw) == code


def test_a_coding_is_canonicalised_as_a_whole() -> None:
    assert canonical_coding("urn:oid:2.16.840.1.113883.6.90", "g35a") == (ICD10CM, "G35.A")
    assert canonical_coding("http://example.org/x", " Ab ") == ("http://example.org/x", "Ab")


def test_icd_family_filters_are_decided_by_prefix() -> None:
    is_a = code_filter(ICD11, "concept", "is-a", "8A40")
    assert is_a is not None
    assert all(is_a(c) for c in ("8A40", "8A40.0", "8A40.2", "8A40.Z"))
    assert not any(is_a(c) for c in ("8A41", "8A4", "8B40.0"))
    below = code_filter(ICD10CM, "concept", "descendent-of", "g35.b")
    assert below is not None
    assert below("G35.B1") and not below("G35.B") and not below("G35.C1")


def test_regex_filters_match_the_whole_code() -> None:
    pattern = code_filter(ICD10PCS, "code", "regex", "057[MN][034]ZZ")
    assert pattern is not None
    assert pattern("057M0ZZ") and pattern("057N4ZZ")
    assert not pattern("057M3DZ") and not pattern("X057M3ZZ")


def test_snomed_hierarchy_is_not_decided_locally() -> None:
    assert code_filter(SNOMED, "concept", "is-a", "24700007") is None
