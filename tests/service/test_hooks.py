"""Discovery, both hooks, and every prefetch variant against the real server (auth off, loopback)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import service_payloads as p
from cdshooks_checks import assert_no_empty_values, cards_of, expressions, outcome, rules_of
from service_harness import GOOD_TOKEN, FakeFhir, Service, free_port

SIGN = "/cds-services/ccsvi-order-sign"
SELECT = "/cds-services/ccsvi-order-select"


ENV = {"CCSVI_FHIR_TIMEOUT_S": "1", "CCSVI_FHIR_MAX_PAGES": "3"}


@pytest.fixture(scope="module")
def svc(app_factory: Any, fhir: FakeFhir) -> Service:
    """Request/response logic: in process."""
    return app_factory({"CCSVI_ALLOW_FHIR_SERVERS": fhir.fhir, **ENV})


@pytest.fixture(scope="module")
def real_svc(service_factory: Any, fhir: FakeFhir) -> Service:
    """For what only a real server shows: its log."""
    return service_factory({"CCSVI_ALLOW_FHIR_SERVERS": fhir.fhir, **ENV})


@pytest.fixture(autouse=True)
def _clean(fhir: FakeFhir) -> None:
    fhir.reset()


def with_server(req: dict[str, Any], fhir: FakeFhir, token: str = GOOD_TOKEN) -> dict[str, Any]:
    req["fhirServer"] = fhir.fhir
    req["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                "scope": "user/Condition.read", "subject": "ccsvi-cds"}
    return req


def searched(fhir: FakeFhir) -> list[str]:
    return [r["path"].rsplit("/", 1)[-1] for r in fhir.requests]


# --- discovery and health -----------------------------------------------------------------------------


def test_discovery_lists_both_order_hooks_with_prefetch(svc: Service) -> None:
    resp = svc.client.get("/cds-services")
    assert resp.status_code == 200
    services = {s["hook"]: s for s in resp.json()["services"]}
    assert set(services) == {"order-select", "order-sign"}
    for s in services.values():
        assert s["id"] and s["title"] and s["description"]
        assert s["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}"
        assert "ResearchSubject?patient={{context.patientId}}" in s["prefetch"]["researchSubjects"]
        pack = s["extension"]["org.ccsvi-cds.rule-pack"]
        assert pack["name"] == "ccsvi" and len(pack["digest"]) == 64
        assert_no_empty_values(s)


def test_health_reports_the_running_pack(svc: Service) -> None:
    body = svc.client.get("/health").json()
    assert body["status"] == "ok" and body["auth"] == "off"
    discovered = svc.client.get("/cds-services").json()["services"][0]["extension"]["org.ccsvi-cds.rule-pack"]
    assert body["rulePack"] == discovered


# --- the hooks ----------------------------------------------------------------------------------------


def test_order_sign_warns_on_jugular_angioplasty_in_ms(svc: Service, fhir: FakeFhir) -> None:
    cards = cards_of(svc.post(SIGN, p.order_sign()))
    assert rules_of(cards) == ["venous-angioplasty-ms"]
    card = cards[0]
    assert card["indicator"] == "warning"
    deletes = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert deletes and all(a["resourceId"] == "ServiceRequest/sr-ijv-pta" for a in deletes)
    assert "resource" not in deletes[0]  # 2.0 form unless legacy output is configured
    assert fhir.requests == []  # complete prefetch: nothing fetched


def test_each_card_gets_a_fresh_uuid(svc: Service) -> None:
    first = cards_of(svc.post(SIGN, p.order_sign()))[0]["uuid"]
    second = cards_of(svc.post(SIGN, p.order_sign()))[0]["uuid"]
    assert first != second


def test_order_sign_stent_is_critical(svc: Service) -> None:
    stent = p.jugular_angioplasty("sr-stent")
    stent["code"] = p.concept(p.CPT, "37238", "Transcatheter placement of intravascular stent(s), open or "
                              "percutaneous, including radiological supervision and interpretation and including "
                              "angioplasty within the same vessel, when performed; initial vein")
    cards = cards_of(svc.post(SIGN, p.order_sign(orders=[stent])))
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in cards] == [("venous-stent-ms", "critical")]


def test_no_card_without_ms_or_for_unrelated_orders(svc: Service) -> None:
    no_ms = p.full_prefetch(conditions=p.five_conditions()[1:])
    assert cards_of(svc.post(SIGN, p.order_sign(prefetch=no_ms))) == []
    unrelated = [p.mri_brain(), p.femoral_angioplasty_dialysis()]
    assert cards_of(svc.post(SIGN, p.order_sign(orders=unrelated))) == []


def test_order_select_evaluates_only_the_selections(svc: Service) -> None:
    assert cards_of(svc.post(SELECT, p.order_select(["ServiceRequest/sr-mri"]))) == []
    cards = cards_of(svc.post(SELECT, p.order_select(["ServiceRequest/sr-ijv-pta"])))
    assert rules_of(cards) == ["venous-angioplasty-ms"]


def test_order_select_accepts_bare_ids_from_older_clients(svc: Service) -> None:
    assert rules_of(cards_of(svc.post(SELECT, p.order_select(["sr-ijv-pta"])))) == ["venous-angioplasty-ms"]


def test_order_select_needs_selections_that_name_draft_orders(svc: Service) -> None:
    missing = p.order_select([])
    del missing["context"]["selections"]
    assert expressions(outcome(svc.post(SELECT, missing), 400)) == {"context.selections"}
    wrong = p.order_select(["ServiceRequest/sr-mri", "ServiceRequest/nope"])
    assert expressions(outcome(svc.post(SELECT, wrong), 400)) == {"context.selections[1]"}


def test_practitioner_role_user_is_accepted(svc: Service) -> None:
    req = p.order_sign()
    req["context"]["userId"] = "PractitionerRole/123"
    assert len(cards_of(svc.post(SIGN, req))) == 1


@pytest.mark.parametrize("hook", ["patient-view", "order-select"])
def test_hook_mismatch_is_a_client_error_naming_the_expected_hook(svc: Service, hook: str) -> None:
    req = p.order_sign()
    req["hook"] = hook
    issues = outcome(svc.post(SIGN, req), 400)
    assert issues[0]["expression"] == ["hook"] and "order-sign" in issues[0]["diagnostics"]


def test_order_sign_request_posted_to_order_select_is_a_client_error(svc: Service) -> None:
    issues = outcome(svc.post(SELECT, p.order_sign()), 400)
    assert "order-select" in issues[0]["diagnostics"]


# --- prefetch variants --------------------------------------------------------------------------------


def test_missing_key_without_fhir_server_is_412(svc: Service) -> None:
    prefetch = p.full_prefetch()
    del prefetch["conditions"]
    issues = outcome(svc.post(SIGN, p.order_sign(prefetch=prefetch)), 412)
    assert "conditions" in issues[0]["diagnostics"] and "fhirServer" in issues[0]["diagnostics"]


def test_no_prefetch_at_all_is_fetched_with_the_bearer_token(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": p.five_conditions()}
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert sorted(searched(fhir)) == ["Condition", "Procedure", "ResearchSubject"]
    assert {r["authorization"] for r in fhir.requests} == {f"Bearer {GOOD_TOKEN}"}
    subject_search = next(r for r in fhir.requests if r["path"].endswith("ResearchSubject"))
    assert subject_search["query"] == {"patient": p.PATIENT}  # no _include: the spec's recommended subset


def test_missing_key_is_fetched_and_only_that_one(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": [p.ms_condition()]}
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]["conditions"]
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert searched(fhir) == ["Condition"]


def test_null_means_no_data_and_is_not_fetched(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": [p.ms_condition()]}
    req = with_server(p.order_sign(), fhir)
    req["prefetch"]["conditions"] = None
    assert cards_of(svc.post(SIGN, req)) == []  # no MS known, the order states no reason
    assert fhir.requests == []


def test_empty_bundle_means_no_data(svc: Service, fhir: FakeFhir) -> None:
    req = with_server(p.order_sign(prefetch=p.full_prefetch(conditions=[])), fhir)
    assert cards_of(svc.post(SIGN, req)) == []
    assert fhir.requests == []


def test_operation_outcome_prefetch_is_fetched(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": [p.ms_condition()]}
    req = with_server(p.order_sign(), fhir)
    req["prefetch"]["conditions"] = {"resourceType": "OperationOutcome",
                                     "issue": [{"severity": "error", "code": "timeout"}]}
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert searched(fhir) == ["Condition"]


def test_operation_outcome_without_fhir_server_is_412(svc: Service) -> None:
    req = p.order_sign()
    req["prefetch"]["conditions"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
                                                                                  "code": "timeout"}]}
    outcome(svc.post(SIGN, req), 412)


def test_paginated_prefetch_is_followed(svc: Service, fhir: FakeFhir) -> None:
    # page 1 (in the request) has no MS; page 2, on the FHIR server, has it
    fhir.data[p.PATIENT] = {"Condition": p.five_conditions()[1:] + [p.ms_condition()]}
    fhir.page_size = 4
    first = p.bundle(p.five_conditions()[1:], next_url=f"{fhir.fhir}/Condition?patient={p.PATIENT}&page=1")
    req = with_server(p.order_sign(prefetch={**p.full_prefetch(), "conditions": first}), fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert [(r["path"], r["query"].get("page")) for r in fhir.requests] == [("/fhir/Condition", "1")]


def test_fetched_search_pages_are_followed(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": p.five_conditions()[1:] + [p.ms_condition()]}
    fhir.page_size = 2  # 3 pages: the MS condition is on the last
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]["conditions"]
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert [r["query"].get("page") for r in fhir.requests] == [None, "1", "2"]


def test_paging_is_bounded(svc: Service, fhir: FakeFhir) -> None:
    fhir.data[p.PATIENT] = {"Condition": p.five_conditions() * 2}
    fhir.page_size = 1  # 10 pages > CCSVI_FHIR_MAX_PAGES=3
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]["conditions"]
    assert "pages" in outcome(svc.post(SIGN, req), 412)[0]["diagnostics"]
    assert len(fhir.requests) == 3


def test_next_link_outside_fhir_server_is_refused(svc: Service, fhir: FakeFhir) -> None:
    first = p.bundle([], next_url="http://127.0.0.2:9/steal?x=1")
    req = with_server(p.order_sign(prefetch={**p.full_prefetch(), "conditions": first}), fhir)
    issues = outcome(svc.post(SIGN, req), 400)
    assert expressions(issues) == {"prefetch.conditions.link"}
    assert fhir.requests == []


def test_fhir_server_not_allowed_is_refused_without_fetching(svc: Service, fhir: FakeFhir) -> None:
    other = FakeFhir()  # a server the operator did not allow: it must see no request at all
    try:
        req = with_server(p.order_sign(), other)
        del req["prefetch"]["conditions"]
        issues = outcome(svc.post(SIGN, req), 400)
        assert expressions(issues) == {"fhirServer"} and issues[0]["code"] == "forbidden"
        req["fhirServer"] = fhir.fhir + "-evil"  # a prefix match that is not on a path-segment boundary
        outcome(svc.post(SIGN, req), 400)
        assert other.requests == [] and fhir.requests == []
    finally:
        other.close()


def test_fhir_server_refusing_the_token_is_412(real_svc: Service, fhir: FakeFhir) -> None:
    svc = real_svc
    req = with_server(p.order_sign(), fhir, token="tok-refused-7f3a")
    del req["prefetch"]["conditions"]
    assert "HTTP 401" in outcome(svc.post(SIGN, req), 412)[0]["diagnostics"]
    resp = svc.post(SIGN, req)
    assert "tok-refused-7f3a" not in resp.text and GOOD_TOKEN not in svc.log_text() and "tok-refused-7f3a" not in svc.log_text()


def test_fhir_server_down_is_412(service_factory: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    svc = service_factory({"CCSVI_ALLOW_FHIR_SERVERS": dead})
    req = p.order_sign(fhirServer=dead)
    del req["prefetch"]["conditions"]
    assert "unreachable" in outcome(svc.post(SIGN, req), 412)[0]["diagnostics"]


def test_slow_fhir_server_times_out_with_412(svc: Service, fhir: FakeFhir) -> None:
    fhir.delay_s = 2.5  # > CCSVI_FHIR_TIMEOUT_S=1
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]["conditions"]
    assert "within" in outcome(svc.post(SIGN, req), 412)[0]["diagnostics"]


def test_linked_study_is_fetched_and_an_active_trial_gets_the_info_card(svc: Service, fhir: FakeFhir) -> None:
    fhir.studies["st-1"] = {"resourceType": "ResearchStudy", "id": "st-1", "status": "active"}
    req = with_server(p.order_sign(orders=[p.jugular_angioplasty(study="st-1")]), fhir)
    cards = cards_of(svc.post(SIGN, req))
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in cards] == [("ccsvi-trial", "info")]
    assert [r["path"] for r in fhir.requests] == ["/fhir/ResearchStudy/st-1"]


def test_withdrawn_study_does_not_exempt(svc: Service, fhir: FakeFhir) -> None:
    fhir.studies["st-2"] = {"resourceType": "ResearchStudy", "id": "st-2", "status": "withdrawn"}
    req = with_server(p.order_sign(orders=[p.jugular_angioplasty(study="st-2")]), fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]


def test_linked_study_without_fhir_server_is_412(svc: Service) -> None:
    req = p.order_sign(orders=[p.jugular_angioplasty(study="st-1")])
    outcome(svc.post(SIGN, req), 412)


def test_study_included_in_prefetch_is_not_fetched(svc: Service, fhir: FakeFhir) -> None:
    study = {"resourceType": "ResearchStudy", "id": "st-1", "status": "active"}
    prefetch = {**p.full_prefetch(), "researchSubjects": p.bundle([study])}
    req = with_server(p.order_sign(orders=[p.jugular_angioplasty(study="st-1")], prefetch=prefetch), fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["ccsvi-trial"]
    assert fhir.requests == []


def test_prefetch_value_of_the_wrong_kind_is_400(svc: Service) -> None:
    req = p.order_sign()
    req["prefetch"]["conditions"] = "123"
    assert expressions(outcome(svc.post(SIGN, req), 400)) == {"prefetch.conditions"}


def test_unrequested_prefetch_keys_are_ignored(svc: Service) -> None:
    req = p.order_sign()
    req["prefetch"]["user"] = "123"  # as in the 2.0.1 specification's example
    assert len(cards_of(svc.post(SIGN, req))) == 1


def test_a_study_sent_under_an_unrequested_key_is_used_without_a_fhir_server(svc: Service) -> None:
    """An EHR with no fhirServer that sends the linked study anyway: evaluated, not a 412."""
    req = p.order_sign(orders=[p.jugular_angioplasty(study="st-sent")])
    req["prefetch"]["studies"] = p.bundle([{"resourceType": "ResearchStudy", "id": "st-sent", "status": "active"}])
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["ccsvi-trial"]


def test_hook_instance_is_logged_but_no_patient_data(real_svc: Service) -> None:
    svc = real_svc
    req = p.order_sign()
    req["hookInstance"] = str(uuid.uuid4())
    cards_of(svc.post(SIGN, req))
    deadline = time.monotonic() + 5  # the access log line is written just after the response
    while req["hookInstance"] not in (log := svc.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert req["hookInstance"] in log
    for phi in (p.PATIENT, "sclerosis", "jugular", "Practitioner/dr-1"):
        assert phi not in log


def test_legacy_delete_resource_for_cds_hooks_1_clients(service_factory: Any) -> None:
    svc = service_factory({"CCSVI_LEGACY_DELETE_RESOURCE": "true"})
    card = cards_of(svc.post(SIGN, p.order_sign()))[0]
    deletes = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert deletes and all(a["resource"] == a["resourceId"] == "ServiceRequest/sr-ijv-pta" for a in deletes)


def test_allow_fhir_server_option_is_repeatable(service_factory: Any, fhir: FakeFhir) -> None:
    svc = service_factory(args=["--allow-fhir-server", "http://127.0.0.1:1/other",
                                "--allow-fhir-server", fhir.fhir])
    fhir.data[p.PATIENT] = {"Condition": [p.ms_condition()]}
    req = with_server(p.order_sign(), fhir)
    del req["prefetch"]["conditions"]
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
    assert searched(fhir) == ["Condition"]


def test_order_sign_ignores_selections(svc: Service) -> None:
    req = p.order_sign()
    req["context"]["selections"] = ["ServiceRequest/sr-mri"]
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]
