"""Reading FHIR input: references in all their forms, bundles, and malformed resources."""

from __future__ import annotations

import pytest
from builders import CPT, bundle, condition, order, research_subject, study

from ccsvi_cds.facts.references import normalize_reference


@pytest.mark.parametrize(("ref", "expected"), [
    ("Patient/1", "Patient/1"),
    ("https://ehr.example.org/fhir/Patient/1", "Patient/1"),
    ("Patient/1/_history/3", "Patient/1"),
    ("https://ehr.example.org/fhir/Patient/abc-1.2/_history/7", "Patient/abc-1.2"),
    ("#contained", None),
    ("", None),
    (None, None),
])
def test_reference_forms(ref, expected):
    assert normalize_reference(ref) == expected


def test_urn_uuid_references_resolve_through_full_urls(evaluator):
    pid = "urn:uuid:7d3f7f2a-3c1e-4f43-a6b7-1d0f1f2a3b4c"
    sid = "urn:uuid:0e5d1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    patient = {"resourceType": "Patient"}  # no id: it comes from the fullUrl
    cond = condition(pid="x")
    cond["subject"] = {"reference": pid}
    sr = order()
    sr["subject"] = {"reference": pid}
    sr["id"] = "sr1"
    st = study("active", sid="s1")
    sr["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                        "valueReference": {"reference": sid}}]
    st_entry_url = sid
    b = bundle(patient, cond, sr, st, full_urls=[pid, "urn:uuid:11111111-1111-4111-8111-111111111111",
                                                 "urn:uuid:22222222-2222-4222-8222-222222222222", st_entry_url])
    result = evaluator.evaluate([b])
    assert [(f.rule_id, f.patient_ref) for f in result.findings] == [
        ("ccsvi-trial", "Patient/7d3f7f2a-3c1e-4f43-a6b7-1d0f1f2a3b4c")]


def test_absolute_and_versioned_references_join(fired):
    cond = condition()
    cond["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/pt-1/_history/2"}
    sr = order(study="https://ehr.example.org/fhir/ResearchStudy/st1/_history/1")
    assert fired(cond, sr, study("withdrawn")) == [("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")]


def test_malformed_resource_is_reported_with_its_path_and_skipped(evaluator):
    bad = order(sid="bad")
    bad["code"] = "37248"  # a string where a CodeableConcept belongs
    good = order(CPT, "37238", sid="good")
    result = evaluator.evaluate([bundle(condition(), bad, good)])
    assert [f.order_ref for f in result.findings] == ["ServiceRequest/good"]
    assert [(i.path, i.message) for i in result.issues] == [("resources[0].entry[1].resource.code", "expected an object")]


def test_malformed_coding_path_is_precise(evaluator):
    bad = condition()
    bad["code"]["coding"][0]["code"] = 24700007  # a number, not a string
    result = evaluator.evaluate([bad, order()])
    assert result.issues[0].path == "resources[0].code.coding[0].code"
    assert result.findings == []  # the only MS evidence was unreadable


def test_resource_without_type_or_id_is_reported(evaluator):
    result = evaluator.evaluate([{"id": "x"}, {"resourceType": "ServiceRequest"}, bundle(condition(), order())])
    assert [i.path for i in result.issues] == ["resources[0]", "resources[1].id"]
    assert len(result.findings) == 1


def test_bundle_entry_without_resource_is_reported(evaluator):
    b = bundle(condition(), order())
    b["entry"].append({"fullUrl": "x"})
    result = evaluator.evaluate([b])
    assert [i.path for i in result.issues] == ["resources[0].entry[2]"] and len(result.findings) == 1


def test_dangling_research_subject_study_is_reported(evaluator):
    result = evaluator.evaluate([condition(), order(), research_subject(study_ref="ResearchStudy/missing")])
    assert any(i.path.endswith(".study") and "ResearchStudy/missing" in i.message for i in result.issues)
    assert [f.rule_id for f in result.findings] == ["venous-angioplasty-ms"]


def test_default_patient_joins_resources_without_subject(evaluator):
    cond = condition()
    del cond["subject"]
    sr = order()
    del sr["subject"]
    assert evaluator.evaluate([cond, sr]).findings[0].patient_ref is None
    result = evaluator.evaluate([cond, sr], default_patient="pt-7")
    assert result.findings[0].patient_ref == "Patient/pt-7"


def test_full_validation_reports_invalid_fhir(pack):
    from ccsvi_cds.evaluate import Evaluator

    strict = Evaluator(pack, validate=True)
    bad = order()
    bad["intent"] = "not-an-intent-at-all"  # fhir.resources checks the code's pattern only loosely
    bad["authoredOn"] = "yesterday"
    result = strict.evaluate([condition(), bad])
    assert result.findings == []
    assert any(i.path == "resources[1].authoredOn" for i in result.issues)
    assert len(strict.evaluate([condition(), order()]).findings) == 1


def test_evaluation_is_deterministic(evaluator):
    res = [condition(), order(), order(CPT, "37238", sid="sr2")]
    first = evaluator.evaluate(res)
    second = evaluator.evaluate(list(reversed(res)))
    assert [f.card for f in first.findings] == [f.card for f in second.findings]
