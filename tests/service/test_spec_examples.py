"""The CDS Hooks specification's own examples (copied into spec_examples/) are accepted or refused as it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import service_payloads as p
from cdshooks_checks import cards_of, outcome
from service_harness import Service

EXAMPLES = Path(__file__).resolve().parent / "spec_examples"  # copied from the CDS Hooks 2.0.1 specification
SERVICE_OF = {"order-select": "/cds-services/ccsvi-order-select", "order-sign": "/cds-services/ccsvi-order-sign"}


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text())


@pytest.fixture(scope="module")
def svc(app_factory: Any) -> Service:
    return app_factory()


def empty_prefetch() -> dict[str, Any]:
    return {"conditions": None, "procedures": None, "researchSubjects": None}


@pytest.mark.parametrize("name", sorted(f.name for f in EXAMPLES.glob("order-*-context-*.json")))
def test_hook_context_examples_are_accepted(svc: Service, name: str) -> None:
    hook = name.split("-context-")[0]
    req = {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", **example(name),
           "prefetch": empty_prefetch()}
    assert cards_of(svc.post(SERVICE_OF[hook], req)) == []  # diet and medication orders: nothing to say


@pytest.mark.parametrize("name", ["spec-2.0.1-example-02.json", "spec-2.0.1-example-26.json"])
@pytest.mark.parametrize("service", sorted(SERVICE_OF.values()))
def test_spec_request_examples_of_another_hook_are_refused(svc: Service, name: str, service: str) -> None:
    issues = outcome(svc.post(service, example(name)), 400)  # patient-view: a hook these services do not answer
    assert issues[0]["expression"] == ["hook"]


def test_spec_request_envelope_on_an_order_hook(svc: Service) -> None:
    """Example 02's fhirServer/fhirAuthorization, 26's extension, 08's odd `user` prefetch, with our context."""
    req = p.order_sign()
    env = example("spec-2.0.1-example-02.json")
    req.update(fhirServer=env["fhirServer"], fhirAuthorization=env["fhirAuthorization"],
               extension=example("spec-2.0.1-example-26.json")["extension"])
    req["prefetch"]["user"] = example("spec-2.0.1-example-08.json")["prefetch"]["user"]
    assert len(cards_of(svc.post(SERVICE_OF["order-sign"], req))) == 1  # complete prefetch: nothing fetched


@pytest.mark.parametrize("name", ["spec-2.0.1-example-19.json", "spec-2.0.1-example-20.json",
                                  "spec-2.0.1-example-21.json"])
def test_spec_feedback_examples_are_accepted(svc: Service, name: str) -> None:
    resp = svc.post(SERVICE_OF["order-sign"] + "/feedback", example(name))
    assert resp.status_code == 200 and resp.json()["unmatchedCards"] == 1


def test_discovery_has_the_shape_of_the_spec_examples(svc: Service) -> None:
    ours = svc.client.get("/cds-services").json()
    for name in ("spec-2.0.1-example-01.json", "spec-2.0.1-example-27.json"):
        theirs = example(name)["services"][0]
        assert set(theirs) - {"extension"} <= set(ours["services"][0]) | {"usageRequirements"}
    for service in ours["services"]:
        assert {"hook", "description", "id"} <= set(service)
