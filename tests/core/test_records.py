"""The records core: one reference reader, one duplicate and grouping policy, selections, typed issues,
and the data requirements derived from the pack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import ROOT, STUDY_EXT, condition, order, patient

from ccsvi_cds.authoring.lint import lint_pack
from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.facts.issues import IssueKind
from ccsvi_cds.facts.records import flatten, read_records, request_targets, resolve_selections
from ccsvi_cds.facts.references import RefForm, read_reference
from ccsvi_cds.facts.requirements import data_requirements
from ccsvi_cds.rulepack import PackError, load_pack

TYPES = frozenset({"Patient", "ServiceRequest", "Condition", "Procedure", "ResearchSubject", "ResearchStudy"})


@pytest.mark.parametrize(("text", "form", "key"), [
    ("Patient/p1", RefForm.RELATIVE, "Patient/p1"),
    ("https://ehr.example.org/fhir/Patient/p1", RefForm.ABSOLUTE, "Patient/p1"),
    ("Patient/p1/_history/3", RefForm.RELATIVE, "Patient/p1"),
    ("https://x.org/fhir/R4/Patient/p1/_history/2", RefForm.ABSOLUTE, "Patient/p1"),
    ("#c1", RefForm.CONTAINED, "ServiceRequest/s1#c1"),
    ("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1234567893", RefForm.CONDITIONAL, None),
    ("urn:uuid:0b6a", RefForm.URN, None),
    ("Patient/", RefForm.UNREADABLE, None),
    ("just some text", RefForm.UNREADABLE, None),
])
def test_reference_forms(text: str, form: RefForm, key: str | None) -> None:
    ref = read_reference(text, None, container="ServiceRequest/s1")
    assert (ref.form, ref.key) == (form, key)
    assert ref.url == (text if form is RefForm.ABSOLUTE else None)


def test_urn_uuid_resolves_through_the_bundle_full_url() -> None:
    assert read_reference("urn:uuid:0b6a", {"urn:uuid:0b6a": "Patient/p9"}).key == "Patient/p9"


def test_absolute_full_url_of_a_bundle_entry_is_an_alias() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "https://other.example/fhir/Patient/p1", "resource": patient("p1")}]}
    records = read_records([bundle], TYPES)
    assert read_reference("https://other.example/fhir/Patient/p1", records.aliases).key == "Patient/p1"


def test_later_record_wins_and_a_differing_duplicate_is_reported() -> None:
    first, second = order(sid="s1", text="MRI brain", body=None, code=None), order(sid="s1")
    records = read_records([patient(), first, second, second], TYPES)
    kept = records.index["ServiceRequest/s1"]
    assert kept.resource is second
    assert [(i.kind, i.path) for i in records.issues] == [(IssueKind.DUPLICATE_ID, "resources[1]")]


def test_contained_resources_are_indexed_under_their_container_only() -> None:
    sr = order(sid="s1", contained=[condition(cid="c9")], reasonReference=[{"reference": "#c9"}])
    records = read_records([patient(), sr], TYPES)
    assert "ServiceRequest/s1#c9" in records.index
    assert "Condition/c9" not in records.index
    assert [i.resource["resourceType"] for g in records.patients.values() for i in g.items] == \
        ["Patient", "ServiceRequest"]


@pytest.mark.parametrize("selection", ["ServiceRequest/s2", "s2", "https://ehr.example.org/fhir/ServiceRequest/s2"])
def test_selections_by_reference_or_bare_id(selection: str) -> None:
    assert resolve_selections([selection], ["ServiceRequest/s1", "ServiceRequest/s2"]) == (["ServiceRequest/s2"], [])


def test_unknown_selection_is_a_typed_issue() -> None:
    request = {"hook": "order-select", "context": {"patientId": "pt-1", "selections": ["s1", "nope", 7],
                                                    "draftOrders": {"resourceType": "Bundle", "entry": [
                                                        {"resource": order(sid="s1")}]}}}
    targets, issues = request_targets(request)
    assert targets == ["ServiceRequest/s1"]
    assert [(i.kind, i.path) for i in issues] == [(IssueKind.UNKNOWN_SELECTION, "context.selections[1]"),
                                                  (IssueKind.UNKNOWN_SELECTION, "context.selections[2]")]


def test_conditional_reference_is_no_issue_and_a_dangling_one_is(pack) -> None:
    sr = order(sid="s1", requester={"reference": "Practitioner?identifier=urn:npi|1"},
               reasonReference=[{"reference": "Condition/gone"}])
    result = Evaluator(pack).evaluate([patient(), condition(), sr])
    assert [(i.kind, i.path) for i in result.issues] == [
        (IssueKind.DANGLING_REFERENCE, "resources[2].reasonReference[0]")]
    assert result.findings[0].requester is None


def test_requester_is_a_reference_never_a_display(pack) -> None:
    sr = order(sid="s1", requester={"display": "Dr Display Only"})
    finding = Evaluator(pack).evaluate([patient(), condition(), sr]).findings[0]
    assert (finding.requester, finding.requester_display) == (None, "Dr Display Only")


def test_reason_condition_counts_only_if_it_would_count_on_its_own(pack) -> None:
    """An unspecified-vein angioplasty fires only with MS evidence; an entered-in-error Condition is none."""
    body = None
    for verification, fires in (("confirmed", True), ("entered-in-error", False), ("refuted", False)):
        ms = condition(cid="c-r", verification=verification)
        sr = order(sid="s1", body=body, reasonReference=[{"reference": "Condition/c-r"}])
        result = Evaluator(pack).evaluate([patient(), ms, sr])
        assert bool(result.findings) is fires, verification


def test_generic_ms_code_beside_subtype_text_is_that_subtype(pack) -> None:
    ms = condition(code="24700007", text="Relapsing-remitting multiple sclerosis")
    finding = Evaluator(pack).evaluate([patient(), ms, order(sid="s1")]).findings[0]
    assert finding.matched["patient"]["ms_subtype"] == "relapsing-remitting"


def test_order_reason_gives_the_subtype(pack) -> None:
    reason = [{"coding": [{"system": "http://snomed.info/sct", "code": "426373005"}]}]
    finding = Evaluator(pack).evaluate([patient(), condition(), order(sid="s1", reasonCode=reason)]).findings[0]
    assert finding.matched["patient"]["ms_subtype"] == "relapsing-remitting"


def test_contained_study_behind_the_extension_exempts_the_order(pack) -> None:
    study = {"resourceType": "ResearchStudy", "id": "st", "status": "active"}
    sr = order(sid="s1", contained=[study], extension=[{"url": STUDY_EXT, "valueReference": {"reference": "#st"}}])
    findings = Evaluator(pack).evaluate([patient(), condition(), sr]).findings
    assert [(f.rule_id, f.matched["order"]["study"]) for f in findings] == [("ccsvi-trial", "ServiceRequest/s1#st")]


# ----------------------------------------------------------------------------------------- requirements


def test_requirements_follow_the_rules(pack, tmp_path: Path) -> None:
    req = data_requirements(pack)
    assert req.patient_searches == ("Condition", "Procedure", "ResearchSubject")
    assert req.by_reference == {"ResearchStudy"}
    assert "_include" not in str(req.prefetch_templates())
    # without the repeat rule nobody needs prior Procedures: the prefetch drops them
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    (copy / "repeat-venous-procedure.yaml").unlink()
    shutil.rmtree(copy / "cases")
    assert "procedures" not in data_requirements(load_pack(copy)).prefetch_templates()


def test_renaming_an_ms_value_without_its_subtype_is_located(tmp_path: Path) -> None:
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    text = (copy / "pack.yaml").read_text()
    (copy / "pack.yaml").write_text(text.replace("- value: ms-progressive", "- value: ms-prog"))
    with pytest.raises(PackError) as err:
        load_pack(copy)
    problem = next(p for p in err.value.problems if "ms-progressive" in p.message)
    line = next(i for i, ln in enumerate((copy / "pack.yaml").read_text().splitlines(), 1)
                if "condition: ms-progressive" in ln)
    assert (Path(problem.file).name, problem.line) == ("pack.yaml", line)


def test_renaming_a_subtype_leaves_rules_that_name_it_unreachable(tmp_path: Path) -> None:
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    text = (copy / "pack.yaml").read_text()
    (copy / "pack.yaml").write_text(text.replace("subtype: progressive}", "subtype: prog}"))
    report = lint_pack(copy)
    found = [p for p in report.errors if "'progressive' is not a value of patient.ms_subtype" in p.message]
    assert {Path(p.file).name for p in found} == {"venous-angioplasty-ms.yaml", "venous-stent-ms.yaml"}
    for p in found:
        assert "patient.ms_subtype == 'progressive'" in Path(p.file).read_text().splitlines()[p.line - 1]


def test_reading_a_request_leaves_nothing_for_the_garbage_collector() -> None:
    """The service reads every request here: objects caught in reference cycles wait for the collector's
    pauses (a nested recursive closure is such a cycle on every call)."""
    import gc

    bundle = {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}},
                                                  {"resource": {"resourceType": "Condition", "id": "c1"}}]}
    flatten([bundle])  # warm: first calls may create lasting objects
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            flatten([bundle, {"resourceType": "Patient", "id": "p1"}])
        assert gc.collect() == 0
    finally:
        gc.enable()
