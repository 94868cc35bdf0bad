"""policy.md, case by case: what fires, what stays silent, and through which coding."""

from __future__ import annotations

import pytest
from builders import (
    CPT,
    ICD10,
    ICD10CM,
    ICD11,
    IJV,
    LOINC,
    PCS,
    SCT,
    bundle,
    concept,
    condition,
    order,
    patient,
    procedure,
    research_subject,
    study,
)

ANGIO = ("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")
STENT = ("venous-stent-ms", "critical", "ServiceRequest/sr1")
TRIAL = ("ccsvi-trial", "info", "ServiceRequest/sr1")
REPEAT = ("repeat-venous-procedure", "warning", "ServiceRequest/sr1")


# --- each rule fires ---------------------------------------------------------------------------------

def test_angioplasty_of_jugular_vein_in_ms_warns(fired):
    assert fired(patient(), condition(), order()) == [ANGIO]


def test_stent_in_ms_is_critical_and_replaces_the_angioplasty_card(fired):
    assert fired(patient(), condition(), order(CPT, "37238")) == [STENT]


def test_approved_trial_replaces_the_warning_with_info(fired):
    assert fired(condition(), order(study="ResearchStudy/st1"), study("active")) == [TRIAL]
    assert fired(condition(), order(CPT, "37238", study="ResearchStudy/st1"), study("approved")) == [TRIAL]


def test_prior_completed_procedure_adds_the_repeat_card(fired):
    assert fired(condition(), procedure(), order()) == [ANGIO, REPEAT]
    assert fired(condition(), procedure(), order(CPT, "37238")) == [STENT, REPEAT]


@pytest.mark.parametrize("status", ["in-progress", "not-done", "entered-in-error", "preparation"])
def test_prior_procedure_that_was_not_completed_is_no_repeat(fired, status):
    assert fired(condition(), procedure(status=status), order()) == [ANGIO]


def test_prior_procedure_of_another_vein_without_ccsvi_reason_is_no_repeat(fired):
    iliac = {"coding": [{"system": SCT, "code": "46027005"}]}
    prior = procedure(CPT, "37248", bodySite=[iliac])
    assert fired(condition(), prior, order()) == [ANGIO]


def test_prior_procedure_coded_only_by_text_with_ccsvi_reason_counts(fired):
    prior = procedure(CPT, "37248", reasonCode=[concept(text="CCSVI")], bodySite=[{"text": "left subclavian"}])
    assert fired(condition(), prior, order()) == [ANGIO, REPEAT]


# --- does not fire -----------------------------------------------------------------------------------

def test_carotid_artery_angioplasty_is_silent(fired):
    carotid = {"coding": [{"system": SCT, "code": "69105007"}]}
    assert fired(condition(), order(SCT, "68457009", body=carotid)) == []
    assert fired(condition(), order(text="Coronary angioplasty", system=None, code=None, body=None)) == []


def test_dialysis_circuit_angioplasty_is_silent(fired):
    assert fired(condition(), order(CPT, "36902", body=None)) == []
    assert fired(condition(), order(CPT, "36905", body=None)) == []
    assert fired(condition(), order(CPT, "36907", body=None)) == []


def test_venous_angioplasty_for_dialysis_access_by_text_is_silent(fired):
    access = order(CPT, "37248", body={"text": "AV fistula outflow vein"}, reason=[concept(text="Dialysis access stenosis")])
    assert fired(condition(), access) == []


@pytest.mark.parametrize("code", ["46027005", "83419000", "9454009"])
def test_other_named_vein_without_ms_or_ccsvi_reason_is_silent(fired, code):
    body = {"coding": [{"system": SCT, "code": code}]}
    assert fired(condition(), order(CPT, "37238", body=body, reason=[concept(text="May-Thurner syndrome")])) == []


def test_renal_vein_by_text_is_silent(fired):
    assert fired(condition(), order(CPT, "37248", body={"text": "left renal vein"})) == []


def test_other_named_vein_with_ccsvi_reason_fires(fired):
    body = {"coding": [{"system": SCT, "code": "9454009"}]}
    assert fired(order(CPT, "37248", body=body, reason=[concept(text="CCSVI")])) == [ANGIO]


def test_unrelated_order_for_ms_patient_is_silent(fired):
    assert fired(condition(), order(LOINC, "24590-2", body=None, text="MRI brain")) == []


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_ms_refuted_or_entered_in_error_does_not_count(fired, verification):
    assert fired(condition(verification=verification), order()) == []


@pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential", None])
def test_ms_not_refuted_still_counts(fired, verification):
    assert fired(condition(verification=verification), order()) == [ANGIO]


@pytest.mark.parametrize("clinical", ["active", "recurrence", "relapse", "inactive", "remission", "resolved"])
def test_ms_counts_whatever_its_clinical_status(fired, clinical):
    assert fired(condition(clinical=clinical), order()) == [ANGIO]


@pytest.mark.parametrize(("system", "code"), [(ICD10CM, "G37.9"), (ICD11, "8A41")])
def test_clinically_isolated_syndrome_is_not_ms(fired, system, code):
    assert fired(condition(system, code), order()) == []
    assert fired(condition(None, None, text="Clinically isolated syndrome"), order()) == []


def test_jugular_angioplasty_without_ms_or_ccsvi_is_silent(fired):
    assert fired(patient(), order(reason=[concept(text="Stenosis after central venous catheter")])) == []


def test_entered_in_error_order_is_not_evaluated(evaluate):
    result = evaluate(condition(), order(status="entered-in-error"))
    assert result.findings == [] and result.orders_evaluated == 0


@pytest.mark.parametrize("status", ["draft", "active", "on-hold", "revoked", "completed", "unknown"])
def test_every_other_order_status_is_evaluated(fired, status):
    assert fired(condition(), order(status=status)) == [ANGIO]


def test_generic_angioplasty_code_without_venous_site_or_reason_is_silent(fired):
    assert fired(condition(), order(SCT, "68457009", body=None)) == []


def test_generic_angioplasty_code_with_jugular_site_fires(fired):
    assert fired(condition(), order(SCT, "68457009", body=IJV)) == [ANGIO]


# --- coding variants ---------------------------------------------------------------------------------

MS_CODES = [
    (SCT, "24700007"), (SCT, "426373005"), (SCT, "425500002"), (SCT, "428700003"), (SCT, "230374002"),
    (ICD10CM, "G35"), (ICD10CM, "G35.A"), (ICD10CM, "G35.B"), (ICD10CM, "G35.B0"), (ICD10CM, "G35.B1"),
    (ICD10CM, "G35.B2"), (ICD10CM, "G35.C"), (ICD10CM, "G35.C0"), (ICD10CM, "G35.C1"), (ICD10CM, "G35.C2"),
    (ICD10CM, "G35.D"), (ICD10, "G35"), (ICD11, "8A40.2"),
]


@pytest.mark.parametrize(("system", "code"), MS_CODES)
def test_every_ms_code_counts(fired, system, code):
    assert fired(condition(system, code), order()) == [ANGIO]


def test_ms_by_text_when_no_code_says_it(fired):
    assert fired(condition(None, None, text="Multiple sclerosis, relapsing-remitting"), order()) == [ANGIO]


def test_a_local_code_with_ms_display_counts_by_text(fired):
    local = {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/pt-1"},
             "code": {"coding": [{"system": "urn:oid:1.2.3.4", "code": "MS01", "display": "Multiple sclerosis"}]}}
    assert fired(local, order()) == [ANGIO]


def test_a_code_outside_the_value_sets_is_not_ms(fired):
    assert fired(condition(ICD10CM, "G36.0"), order()) == []


@pytest.mark.parametrize("code", ["37248", "37249", "35476", "75978"])
def test_cpt_venous_angioplasty_codes(fired, code):
    assert fired(condition(), order(CPT, code)) == [ANGIO]


@pytest.mark.parametrize("code", ["37238", "37239"])
def test_cpt_venous_stent_codes(fired, code):
    assert fired(condition(), order(CPT, code)) == [STENT]


@pytest.mark.parametrize("code", ["057M3ZZ", "057N3ZZ", "05703ZZ", "05713ZZ", "057R3ZZ", "057S3ZZ"])
def test_icd10pcs_dilation_encodes_the_vein(fired, code):
    assert fired(condition(), order(PCS, code, body=None)) == [ANGIO]


@pytest.mark.parametrize("code", ["057M3DZ", "057N3DZ", "05703DZ", "05713DZ", "057R3DZ", "057S3DZ"])
def test_icd10pcs_with_intraluminal_device_is_a_stent(fired, code):
    assert fired(condition(), order(PCS, code, body=None)) == [STENT]


def test_snomed_angioplasty_of_vein_with_unspecified_vein(fired):
    assert fired(condition(), order(SCT, "359551000", body=None)) == [ANGIO]


def test_snomed_stent_placement_needs_a_venous_site(fired):
    assert fired(condition(), order(SCT, "1296925008", body=IJV)) == [STENT]
    assert fired(condition(), order(SCT, "1296925008", body=None)) == []


def test_loinc_guidance_for_angioplasty_of_vein(fired):
    assert fired(condition(), order(LOINC, "30640-7", body=None)) == [ANGIO]


@pytest.mark.parametrize("text", [
    "Liberation therapy", "Zamboni procedure", "Jugular venoplasty", "CCSVI treatment - venous angioplasty",
    "Chronic cerebrospinal venous insufficiency: balloon venoplasty",
])
def test_free_text_order_without_codes(fired, text):
    assert fired(patient(), order(None, None, text=text, body=None)) == [ANGIO]


def test_free_text_stent(fired):
    assert fired(patient(), order(None, None, text="Jugular vein stent for CCSVI", body=None)) == [STENT]


def test_ccsvi_reason_without_ms_condition_fires(fired):
    assert fired(order(reason=[concept(ICD10CM, "I87.1", "CCSVI")])) == [ANGIO]


def test_ms_as_the_orders_own_reason_code_fires(fired):
    assert fired(order(reason=[concept(ICD10CM, "G35.A")])) == [ANGIO]


def test_ms_via_reason_reference(fired):
    cond = condition(cid="ms1")
    cond.pop("subject")  # only reachable through the order
    assert fired(cond, order(reasonReference=[{"reference": "Condition/ms1"}], pid="pt-2")) == [
        ("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")]


def test_coded_site_wins_over_text(fired):
    iliac = {"coding": [{"system": SCT, "code": "46027005"}], "text": "iliac vein (jugular later?)"}
    assert fired(condition(), order(CPT, "37248", body=iliac)) == []


# --- trial linkage -----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["active", "approved"])
def test_trial_via_research_subject(fired, status):
    assert fired(condition(), order(), research_subject("on-study"), study(status)) == [TRIAL]


@pytest.mark.parametrize("subject_status", ["on-study-intervention", "on-study-observation"])
def test_enrolled_subject_statuses(fired, subject_status):
    assert fired(condition(), order(), research_subject(subject_status), study("active")) == [TRIAL]


@pytest.mark.parametrize("subject_status", ["candidate", "screening", "withdrawn", "ineligible", "off-study"])
def test_not_enrolled_subject_does_not_exempt(fired, subject_status):
    assert fired(condition(), order(), research_subject(subject_status), study("active")) == [ANGIO]


@pytest.mark.parametrize("status", [
    "withdrawn", "disapproved", "in-review", "completed", "closed-to-accrual", "temporarily-closed-to-accrual",
    "administratively-completed",
])
def test_non_approved_study_does_not_exempt_and_says_so(evaluate, status):
    result = evaluate(condition(), order(study="ResearchStudy/st1"), study(status))
    assert [f.rule_id for f in result.findings] == ["venous-angioplasty-ms"]
    detail = result.findings[0].card["detail"]
    assert "ResearchStudy/st1" in detail and f'"{status}"' in detail
    assert result.findings[0].matched["order"]["study_status"] == status


def test_study_linked_but_missing_is_reported_and_not_exempt(evaluate):
    result = evaluate(condition(), order(study="ResearchStudy/gone"))
    assert [f.rule_id for f in result.findings] == ["venous-angioplasty-ms"]
    assert any("ResearchStudy/gone" in i.message for i in result.issues)


def test_trial_also_exempts_the_repeat_card(fired):
    assert fired(condition(), procedure(), order(study="ResearchStudy/st1"), study("active")) == [TRIAL]


# --- R5 shapes ---------------------------------------------------------------------------------------

def test_r5_reason_as_codeable_reference(fired):
    r5 = order(reason=None)
    r5["reason"] = [{"concept": concept(text="CCSVI")}]
    assert fired(r5) == [ANGIO]


def test_r5_reason_reference_to_ms_condition(fired):
    r5 = order(pid="pt-9")
    r5["reason"] = [{"reference": {"reference": "Condition/ms9"}}]
    cond = condition(cid="ms9", pid="pt-9")
    assert fired(cond, r5) == [("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")]


def test_r5_code_as_codeable_reference(fired):
    r5 = order(reason=None)
    r5["code"] = {"concept": concept(CPT, "37238")}
    assert fired(condition(), r5) == [STENT]


def test_r5_research_subject_and_progress_status(fired):
    subject = {"resourceType": "ResearchSubject", "id": "rs5", "status": "active",
               "study": {"reference": "ResearchStudy/st5"}, "subject": {"reference": "Patient/pt-1"},
               "progress": [{"subjectState": {"coding": [{"code": "on-study"}]}}]}
    r5_study = {"resourceType": "ResearchStudy", "id": "st5", "status": "active",
                "progressStatus": [{"state": {"coding": [{"code": "overall-study"}]}, "actual": True,
                                    "period": {"start": "2020-01-01"}},
                                   {"state": {"coding": [{"code": "active"}]}, "actual": True,
                                    "period": {"start": "2026-01-01"}}]}
    assert fired(condition(), order(), subject, r5_study) == [TRIAL]


# --- the card ----------------------------------------------------------------------------------------

def test_card_shape(evaluate):
    card = evaluate(condition(), order()).cards[0]
    assert len(card["summary"]) < 140
    assert card["indicator"] == "warning"
    assert card["source"]["topic"]["code"] == "venous-angioplasty-ms"
    assert card["selectionBehavior"] == "at-most-one"
    cancel = card["suggestions"][0]
    assert cancel["isRecommended"] is True
    assert cancel["actions"] == [{"type": "delete", "description": "Cancel the venous angioplasty order",
                                  "resourceId": "ServiceRequest/sr1"}]
    refer = card["suggestions"][1]["actions"][1]
    assert refer["type"] == "create" and refer["resource"]["subject"] == {"reference": "Patient/pt-1"}
    assert {r["code"] for r in card["overrideReasons"]} == {"approved-trial", "not-ccsvi", "informed-decision"}
    assert all(r["display"] for r in card["overrideReasons"])
    assert all(link["type"] == "absolute" and link["url"].startswith("http") for link in card["links"])
    matched = card["extension"]["org.ccsvi-cds.matched"]
    assert matched["order"]["ref"] == "ServiceRequest/sr1"
    assert matched["patient"]["ms_conditions"] == "Condition/c1"


def test_no_referral_suggestion_when_patient_has_no_ms_condition(evaluate):
    card = evaluate(order(reason=[concept(text="CCSVI")])).cards[0]
    assert [s["label"] for s in card["suggestions"]] == ["Cancel this order"]


def test_suggestion_uuids_are_stable(evaluate):
    first = evaluate(condition(), order()).cards[0]["suggestions"][0]["uuid"]
    assert first == evaluate(condition(), order()).cards[0]["suggestions"][0]["uuid"]


def test_detail_is_tailored_to_the_ms_subtype(evaluate):
    progressive = evaluate(condition(ICD10CM, "G35.B0"), order()).cards[0]["detail"]
    relapsing = evaluate(condition(SCT, "426373005"), order()).cards[0]["detail"]
    unknown = evaluate(condition(SCT, "24700007"), order()).cards[0]["detail"]
    assert "Progressive MS" in progressive and "Relapsing-remitting" not in progressive
    assert "Relapsing-remitting MS" in relapsing and "10% vs 2%" in relapsing
    assert "Progressive MS" not in unknown and "Relapsing-remitting MS" not in unknown
    for detail in (progressive, relapsing, unknown):
        assert "47%" in detail and "18 months" in detail


def test_progressive_wins_when_conditions_disagree(evaluate):
    result = evaluate(condition(SCT, "426373005", cid="a"), condition(SCT, "425500002", cid="b"), order())
    assert result.findings[0].matched["patient"]["ms_subtype"] == "progressive"


def test_several_orders_several_patients_in_one_bundle(evaluator):
    b = bundle(condition(), order(), condition(cid="c2", pid="pt-2"), order(CPT, "37238", sid="sr2", pid="pt-2"),
               order(CPT, "36902", sid="sr3", body=None))
    result = evaluator.evaluate([b])
    assert [(f.patient_ref, f.rule_id) for f in result.findings] == [
        ("Patient/pt-1", "venous-angioplasty-ms"), ("Patient/pt-2", "venous-stent-ms")]
    assert result.orders_evaluated == 3


def test_targets_restrict_evaluation_to_selected_orders(fired):
    res = (condition(), order(), order(CPT, "37238", sid="sr2"))
    assert fired(*res, targets={"ServiceRequest/sr2"}) == [("venous-stent-ms", "critical", "ServiceRequest/sr2")]
    assert fired(*res, targets=set()) == []
