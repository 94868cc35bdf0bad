"""GET /metrics of a real `ccsvi-cds serve --workers 2`: parsed with prometheus_client's own parser, counts
checked against the requests sent, and every worker's scrape sums both workers' counts."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_payloads as p
from prometheus_client.parser import text_string_to_metric_families
from service_harness import GOOD_TOKEN, REPO, FakeFhir, Service

SIGN = "/cds-services/ccsvi-order-sign"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, client: httpx.Client | None = None) -> Samples:
    resp = (client or httpx).get(url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def with_server(req: dict[str, Any], fhir: FakeFhir) -> dict[str, Any]:
    req["fhirServer"] = fhir.fhir
    req["fhirAuthorization"] = {"access_token": GOOD_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                "scope": "user/Condition.read", "subject": "ccsvi-cds"}
    return req


def on_one_connection(svc: Service, call: Callable[[httpx.Client], Any]) -> tuple[int, Any]:
    """(pid of the worker, result of `call`): one keep-alive connection is served by one worker."""
    with httpx.Client(base_url=svc.url, timeout=10) as client:
        result = call(client)
        return client.get("/health").json()["pid"], result


@pytest.fixture(scope="module")
def svc(service_factory: Any, fhir: FakeFhir) -> Service:
    return service_factory({"CCSVI_WORKERS": "2", "CCSVI_ALLOW_FHIR_SERVERS": fhir.fhir})


def test_counts_from_both_workers_are_summed(svc: Service, fhir: FakeFhir) -> None:
    sent: dict[int, int] = {}  # worker pid -> hook calls it answered
    fallback = 0
    for i in range(400):
        without_procedures = i % 3 == 0  # the service searches fhirServer for the missing key
        body = p.order_sign()
        if without_procedures:
            del body["prefetch"]["procedures"]
            with_server(body, fhir)
        pid, resp = on_one_connection(svc, lambda c, b=body: c.post(SIGN, json=b))
        assert resp.status_code == 200 and len(resp.json()["cards"]) == 1, resp.text
        sent[pid] = sent.get(pid, 0) + 1
        fallback += without_procedures
        if len(sent) == 2 and min(sent.values()) >= 3 and i >= 11:
            break
    assert len(sent) == 2, f"one worker answered every call: {sent}"
    calls = sum(sent.values())
    assert svc.post("/cds-services/made-up-9f2c", p.order_sign()).status_code == 404

    scrapes = {}
    for _ in range(200):  # a scrape answered by each worker
        pid, samples = on_one_connection(svc, lambda c: scrape(svc.url, c))
        scrapes.setdefault(pid, samples)
        if len(scrapes) == 2:
            break
    assert set(scrapes) == set(sent)
    health = svc.client.get("/health").json()["rulePack"]
    for samples in scrapes.values():
        hook = {"endpoint": "hook", "service": "ccsvi-order-sign", "hook": "order-sign"}
        assert value(samples, "ccsvi_requests_total", **hook, status="200") == calls
        assert value(samples, "ccsvi_request_duration_seconds_count", endpoint="hook",
                     service="ccsvi-order-sign") == calls
        assert value(samples, "ccsvi_request_duration_seconds_bucket", endpoint="hook",
                     service="ccsvi-order-sign", le="+Inf") == calls
        assert value(samples, "ccsvi_cards_total", rule="venous-angioplasty-ms", indicator="warning") == calls
        assert value(samples, "ccsvi_prefetch_fallback_reads_total", key="procedures", kind="search") == fallback
        assert value(samples, "ccsvi_requests_total", endpoint="hook", service="", hook="", status="404") == 1
        assert value(samples, "ccsvi_rule_pack_info", name=health["name"], version=health["version"],
                     digest=health["digest"]) == 2  # two workers serve it
        assert value(samples, "ccsvi_requests_total", endpoint="health", service="", hook="",
                     status="200") >= calls
        assert not any("made-up" in v or "pat-ms" in v for _, labels in samples for _, v in labels)


def test_metrics_need_no_token_like_health(service_factory: Any) -> None:
    issuers = '[{"iss": "https://ehr.example.org", "jku": ["http://127.0.0.1:9/jwks.json"]}]'
    secured = service_factory({"CCSVI_TRUSTED_ISSUERS": issuers})
    assert secured.client.get("/cds-services").status_code == 401
    assert value(scrape(secured.url), "ccsvi_requests_total", endpoint="discovery", service="", hook="",
                 status="401") == 1
    readme = (REPO / "README.md").read_text()
    assert "| `GET /metrics` | Prometheus text format" in readme and "every call except `/health`, `/metrics`" in readme


def test_reloads_are_counted_and_the_pack_label_follows(service_factory: Any, tmp_path: Path) -> None:
    pack = tmp_path / "rules"
    shutil.copytree(REPO / "rules", pack)
    svc = service_factory({"CCSVI_WORKERS": "2"}, ["--rules", str(pack), "--reload-rules"])
    manifest = pack / "pack.yaml"
    original = manifest.read_text()

    def wait_for(check: Callable[[Samples], bool]) -> Samples:
        deadline = time.monotonic() + 60
        while True:
            samples = scrape(svc.url)
            if check(samples):
                return samples
            assert time.monotonic() < deadline, [line for line in svc.log_text().splitlines() if "pack" in line]
            time.sleep(0.2)

    wait_for(lambda s: svc.log_text().count("watching the rule pack for changes") == 2)  # both workers up
    manifest.write_text(original.replace("version: 1.0.0", "version: [1.0.0"))  # not YAML: refused
    # >= 1: a worker whose watcher was still starting may miss this edit; the next one it cannot miss
    wait_for(lambda s: value(s, "ccsvi_rule_pack_reloads_total", outcome="refused") >= 1)
    manifest.write_text(original.replace("version: 1.0.0", "version: 1.0.1"))
    samples = wait_for(lambda s: value(s, "ccsvi_rule_pack_reloads_total", outcome="loaded") == 2)
    info = {dict(labels)["version"]: v for (name, labels), v in samples.items() if name == "ccsvi_rule_pack_info"}
    assert info == {"1.0.0": 0, "1.0.1": 2}


def test_a_killed_worker_leaves_the_pack_gauge_and_keeps_its_counts(service_factory: Any) -> None:
    svc = service_factory({"CCSVI_WORKERS": "2"})
    pids: set[int] = set()
    for _ in range(400):  # a discovery call answered by each worker
        pids.add(on_one_connection(svc, lambda c: c.get("/cds-services"))[0])
        if len(pids) == 2:
            break
    assert len(pids) == 2
    before = scrape(svc.url)
    discovered = value(before, "ccsvi_requests_total", endpoint="discovery", service="", hook="", status="200")
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)  # no shutdown: uvicorn starts a new worker, which sweeps for the dead
    deadline = time.monotonic() + 60
    while True:
        seen = {on_one_connection(svc, lambda c: None)[0] for _ in range(20)}
        if len(seen - pids) == 1 and victim not in seen:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {seen}, killed {victim}"
        time.sleep(0.2)
    after = scrape(svc.url)
    info = [v for (name, _), v in after.items() if name == "ccsvi_rule_pack_info"]
    assert info == [2], info  # the surviving worker and the replacement, not the dead one
    assert value(after, "ccsvi_requests_total", endpoint="discovery", service="", hook="",
                 status="200") == discovered  # the dead worker's requests are still counted
