"""The page behind every card's patient link is served by the service itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

REQUEST = Path(__file__).resolve().parents[2] / "fhir_examples" / "cds-hooks-order-sign.json"


def test_card_patient_link_resolves_on_the_running_service(service_factory: Any) -> None:
    svc = service_factory()
    resp = svc.post("/cds-services/ccsvi-order-sign", json.loads(REQUEST.read_text()))
    links = [link["url"] for card in resp.json()["cards"] for link in card.get("links", [])]
    page = next(url for url in links if "/patient-info/" in url)
    assert page.startswith("http://127.0.0.1:")
    assert httpx.URL(page).port == httpx.URL(str(svc.client.base_url)).port  # the link points at this service
    html = svc.client.get(httpx.URL(page).path)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<h1>" in html.text and "sham" in html.text


def test_unknown_or_escaping_pages_are_404(service_factory: Any) -> None:
    svc = service_factory()
    for page in ("nope", "..%2Fpack", "pack.yaml"):
        resp = svc.client.get(f"/patient-info/{page}")
        assert resp.status_code == 404 and resp.json()["resourceType"] == "OperationOutcome"
