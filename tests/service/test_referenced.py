"""A ResearchStudy an order links to but the EHR did not send is read by reference: from fhirServer with its
token, from another allowlisted server without it, and never from a server the operator did not allow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import service_payloads as p
from cdshooks_checks import cards_of, rules_of
from service_harness import GOOD_TOKEN, FakeFhir, Service

SIGN = "/cds-services/ccsvi-order-sign"
STUDY = {"resourceType": "ResearchStudy", "id": "st-open", "status": "active", "title": "Open registry"}


class PublicFhir:
    """A FHIR server that needs no token (a trial registry, say), recording each request's headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        public = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                public.requests.append((self.path, self.headers.get("Authorization")))
                found = self.path.endswith("/ResearchStudy/st-open")
                raw = json.dumps(STUDY if found else {"resourceType": "OperationOutcome", "issue": []}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.fhir = f"http://127.0.0.1:{self._server.server_address[1]}/registry/fhir"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def registry() -> Iterator[PublicFhir]:
    server = PublicFhir()
    yield server
    server.close()


@pytest.fixture(scope="module")
def svc(app_factory: Any, fhir: FakeFhir, registry: PublicFhir) -> Service:
    return app_factory({"CCSVI_ALLOW_FHIR_SERVERS": json.dumps([fhir.fhir, registry.fhir])})


def _linked_to(reference: str, fhir: FakeFhir) -> dict[str, Any]:
    order = p.jugular_angioplasty()
    order["extension"] = [{"url": p.STUDY_EXT, "valueReference": {"reference": reference}}]
    req = p.order_sign(orders=[order])
    req["fhirServer"] = fhir.fhir
    req["fhirAuthorization"] = {"access_token": GOOD_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                "scope": "user/ResearchStudy.read", "subject": "ccsvi-cds"}
    return req


@pytest.fixture(autouse=True)
def _clean(fhir: FakeFhir, registry: PublicFhir) -> None:
    fhir.reset()
    registry.requests.clear()


def test_absolute_reference_under_fhir_server_is_read_with_the_token(svc: Service, fhir: FakeFhir) -> None:
    fhir.studies["st-1"] = {**STUDY, "id": "st-1"}
    req = _linked_to(f"{fhir.fhir}/ResearchStudy/st-1", fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["ccsvi-trial"]
    assert [(r["path"], r["authorization"]) for r in fhir.requests] == [
        ("/fhir/ResearchStudy/st-1", f"Bearer {GOOD_TOKEN}")]


def test_absolute_reference_to_another_allowed_server_is_read_without_the_token(
        svc: Service, fhir: FakeFhir, registry: PublicFhir) -> None:
    req = _linked_to(f"{registry.fhir}/ResearchStudy/st-open", fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["ccsvi-trial"]
    assert registry.requests == [("/registry/fhir/ResearchStudy/st-open", None)]
    assert fhir.requests == []


def test_absolute_reference_to_a_server_not_allowed_is_never_read(svc: Service, fhir: FakeFhir,
                                                                  registry: PublicFhir) -> None:
    elsewhere = registry.fhir.replace("/registry/fhir", "/elsewhere/fhir")  # same host, outside the prefix
    req = _linked_to(f"{elsewhere}/ResearchStudy/st-open", fhir)
    assert rules_of(cards_of(svc.post(SIGN, req))) == ["venous-angioplasty-ms"]  # not exempted: status unknown
    assert registry.requests == [] and fhir.requests == []
