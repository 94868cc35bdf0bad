"""Codings compared by meaning: system spellings and ICD code forms (facts/terminology.py)."""

from __future__ import annotations

import pytest
from builders import CPT as B_CPT
from builders import PCS as B_PCS
from builders import SCT as B_SCT
from builders import condition, order, patient

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


# --- through the evaluator: every coding counts, named veins decide, spellings do not matter -----------------


WARN = [("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")]


def _codings(*pairs: tuple[str, str]) -> dict[str, object]:
    return {"coding": [{"system": s, "code": c} for s, c in pairs]}


@pytest.mark.parametrize("codings", [
    [(B_CPT, "37248"), (B_PCS, "05743ZZ")],
    [(B_PCS, "05743ZZ"), (B_CPT, "37248")],
    [("urn:oid:2.16.840.1.113883.6.12", "37248"), ("urn:oid:2.16.840.1.113883.6.4", "05743zz")],
])
def test_a_named_vein_in_any_coding_beats_an_unspecified_vein_code(fired, codings) -> None:  # type: ignore[no-untyped-def]
    sr = order(body=None)
    sr["code"] = _codings(*codings)
    assert fired(patient(), condition(), sr) == []
    sr["reasonCode"] = [_codings((ICD10CM, "G35"))]
    assert fired(patient(), condition(), sr) == WARN  # another named vein counts with an MS reason of its own


@pytest.mark.parametrize("site", ["8887007", "48345005", "64131007", "56400007", "8993003", "32764006"])
def test_a_body_site_naming_another_vein_beats_the_unspecified_cpt(fired, site: str) -> None:  # type: ignore[no-untyped-def]
    sr = order(body=_codings(("https://snomed.info/sct", site)))
    assert fired(patient(), condition(), sr) == []


def test_an_outflow_vein_in_the_second_coding_decides(fired) -> None:  # type: ignore[no-untyped-def]
    sr = order(body=None)
    sr["code"] = _codings((B_SCT, "359551000"), (B_PCS, "057N3ZZ"))
    assert fired(patient(), condition(), sr) == WARN


@pytest.mark.parametrize(("system", "code"), [
    ("urn:oid:2.16.840.1.113883.6.96", "24700007"),
    ("http://snomed.info/sct/731000124108/version/20230301", "428700003"),
    ("https://snomed.info/sct/", "426373005"),
    ("urn:oid:2.16.840.1.113883.6.90", "g35.a"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "G35B1"),
    ("urn:oid:2.16.840.1.113883.6.3", " G35 "),
    (ICD11, "8A40.0"),
    (ICD11, "8A40.Y"),
    ("http://id.who.int/icd/release/11/2024-01/mms", "8a40z"),
])
def test_ms_counts_whatever_the_spelling(fired, system: str, code: str) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(system, code), order()) == WARN


@pytest.mark.parametrize(("system", "code"), [(ICD11, "8A41"), ("urn:oid:2.16.840.1.113883.6.90", "g37.9"),
                                              (ICD10CM, "G36.0")])
def test_not_ms_whatever_the_spelling(fired, system: str, code: str) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(system, code), order()) == []


@pytest.mark.parametrize(("code", "rule"), [
    ("057M0ZZ", "venous-angioplasty-ms"), ("057N4ZZ", "venous-angioplasty-ms"), ("05713ZZ", "venous-angioplasty-ms"),
    ("057R0DZ", "venous-stent-ms"), ("05704DZ", "venous-stent-ms"),
])
def test_pcs_dilation_of_an_outflow_vein_in_every_approach(fired, code: str, rule: str) -> None:  # type: ignore[no-untyped-def]
    found = fired(patient(), condition(), order(B_PCS, code, body=None))
    assert [r for r, _, _ in found] == [rule]


@pytest.mark.parametrize("text", ["PTA azygos", "pta   AZYGOUS vein", "PTV R IJV", "Balloon venoplasty, LIJ",
                                  "percutaneous transluminal angioplasty of the left internal jugular vein"])
def test_order_text_and_abbreviations(fired, text: str) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(), order(None, None, text=text, body=None)) == WARN


@pytest.mark.parametrize("text", ["PTA superficial femoral artery", "PTA left external jugular vein",
                                  "Venous sinus stenting (transverse sinus) for IIH", "Stent of the left brachiocephalic vein",
                                  "PTA of the portal vein", "IVC stent", "Gonadal vein stent"])
def test_other_named_veins_in_text_stay_silent_without_an_ms_reason(fired, text: str) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(), order(None, None, text=text, body=None)) == []


@pytest.mark.parametrize("text", ["MULTIPLE   SCLEROSIS", "multiple\tsclerosis", "RRMS", "Multiple sclerosis (SPMS)"])
def test_condition_text_spacing_and_case_do_not_matter(fired, text: str) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(None, None, text=text), order()) == WARN


def test_ms_as_a_title_is_not_multiple_sclerosis(fired) -> None:  # type: ignore[no-untyped-def]
    assert fired(patient(), condition(None, None, text="Seen by Ms Jones"), order()) == []
