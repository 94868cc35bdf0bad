"""HTTP behaviour: malformed input is a 4xx OperationOutcome saying where, never a 500; CORS; 413."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
import service_payloads as p
from cdshooks_checks import expressions, outcome
from service_harness import Service

SIGN = "/cds-services/ccsvi-order-sign"


@pytest.fixture(scope="module")
def svc(service_factory: Any) -> Service:
    return service_factory({"CCSVI_MAX_BODY_BYTES": "65536", "CCSVI_CORS_ORIGINS": "https://ehr.example.org"})


def test_cors_preflight(svc: Service) -> None:
    resp = svc.client.options(SIGN, headers={
        "Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://ehr.example.org"
    assert {"GET", "POST", "OPTIONS"} <= set(resp.headers["access-control-allow-methods"].replace(" ", "").split(","))
    allowed = resp.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_cors_refuses_other_origins_and_decorates_responses(svc: Service) -> None:
    bad = svc.client.options(SIGN, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    resp = svc.client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert resp.headers["access-control-allow-origin"] == "https://ehr.example.org"


def test_oversized_body_is_413(svc: Service) -> None:
    req = p.order_sign()
    req["extension"] = {"org.example.padding": "x" * 70_000}
    issues = outcome(svc.post(SIGN, req), 413)
    assert "65536" in issues[0]["diagnostics"]


def test_oversized_chunked_body_is_413(svc: Service) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 1024
    resp = svc.client.post(SIGN, content=chunks(), headers={"Content-Type": "application/json"})
    outcome(resp, 413)


@pytest.mark.parametrize("body, where", [
    (b"", None),
    (b"{\"hook\": ", None),
    (b"\xff\xfe{}", None),
    (b"[]", None),
    (b"\"order-sign\"", None),
])
def test_unparseable_or_non_object_bodies_are_400(svc: Service, body: bytes, where: str | None) -> None:
    outcome(svc.post(SIGN, body), 400)


def test_json_syntax_error_says_line_and_column(svc: Service) -> None:
    issues = outcome(svc.post(SIGN, b'{\n  "hook": "order-sign",\n  "context": {,}\n}'), 400)
    assert "line 3" in issues[0]["diagnostics"]


def _without(path: list[Any]) -> dict[str, Any]:
    req = p.order_sign()
    node: Any = req
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return req


@pytest.mark.parametrize("path, expression", [
    (["hook"], "hook"),
    (["hookInstance"], "hookInstance"),
    (["context"], "context"),
    (["context", "patientId"], "context.patientId"),
    (["context", "userId"], "context.userId"),
    (["context", "draftOrders"], "context.draftOrders"),
    (["context", "draftOrders", "entry", 0, "resource", "resourceType"],
     "context.draftOrders.entry[0].resource.resourceType"),
])
def test_missing_required_fields_are_located(svc: Service, path: list[Any], expression: str) -> None:
    issues = outcome(svc.post(SIGN, _without(path)), 400)
    assert expression in expressions(issues)
    assert issues[0]["code"] == "required"
    assert "/" + "/".join(str(x) for x in path) in issues[0]["diagnostics"]  # the JSON pointer too


@pytest.mark.parametrize("mutate, expression", [
    (lambda r: r["context"].update(draftOrders={"resourceType": "Patient"}), "context.draftOrders.resourceType"),
    (lambda r: r["context"].update(draftOrders=[]), "context.draftOrders"),
    (lambda r: r["context"]["draftOrders"].update(entry={}), "context.draftOrders.entry"),
    (lambda r: r["context"].update(patientId=42), "context.patientId"),
    (lambda r: r.update(fhirServer="file:///etc/passwd"), "fhirServer"),
    (lambda r: r.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}), "fhirServer"),
    (lambda r: r.update(fhirServer="http://127.0.0.1:9/fhir",
                        fhirAuthorization={"access_token": "t", "token_type": "MAC"}), "fhirAuthorization.token_type"),
    (lambda r: r.update(prefetch=[]), "prefetch"),
])
def test_wrong_shapes_are_located(svc: Service, mutate: Any, expression: str) -> None:
    req = p.order_sign()
    mutate(req)
    assert expression in expressions(outcome(svc.post(SIGN, req), 400))


def test_unknown_service_is_404_and_wrong_method_405(svc: Service) -> None:
    outcome(svc.post("/cds-services/nope", p.order_sign()), 404)
    outcome(svc.client.get(SIGN), 405)
    outcome(svc.client.get("/nowhere"), 404)


def _mutations(value: Any, rng: random.Random) -> Any:
    """A copy of `value` with one random node replaced by a value of another JSON type."""
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])

    walk(value, [])
    target = rng.choice(paths[1:])
    copy = json.loads(json.dumps(value))
    node = copy
    for key in target[:-1]:
        node = node[key]
    node[target[-1]] = rng.choice([None, 0, -1.5, True, "", "x", [], {}, [None], {"resourceType": 1}])
    return copy


def test_random_corruptions_never_give_a_server_error(svc: Service) -> None:
    rng = random.Random(20261121)
    base = p.order_sign(orders=[p.jugular_angioplasty(study="st-1"), p.mri_brain()])
    base["prefetch"]["researchSubjects"] = p.bundle([{"resourceType": "ResearchStudy", "id": "st-1",
                                                      "status": "active"}])
    statuses = set()
    for _ in range(300):
        resp = svc.post(SIGN, _mutations(base, rng))
        statuses.add(resp.status_code)
        assert resp.status_code < 500, resp.text
        if resp.status_code != 200:
            outcome(resp, resp.status_code)
    assert 200 in statuses and 400 in statuses
    health = svc.client.get("/health")
    assert health.status_code == 200


def test_keep_alive_connection_survives_errors(svc: Service) -> None:
    with httpx.Client(base_url=svc.url) as client:
        for body in (b"nope", json.dumps(p.order_sign()).encode(), b"{}"):
            resp = client.post(SIGN, content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code in (200, 400)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize("where", ["extension", "context", "resource", "bundle"])
def test_deeply_nested_json_is_not_a_server_error(svc: Service, where: str) -> None:
    req = p.order_sign()
    if where == "extension":
        req["extension"] = {"org.example.deep": _nested(300)}
    elif where == "context":
        req["context"]["org.example.deep"] = _nested(300)
    elif where == "resource":
        req["context"]["draftOrders"]["entry"][0]["resource"]["note"] = [_nested(300)]
    else:
        inner: Any = p.bundle([p.mri_brain()])
        for _ in range(150):
            inner = p.bundle([inner])
        req["prefetch"]["conditions"] = inner
    resp = svc.post(SIGN, req)
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        outcome(resp, 400)
