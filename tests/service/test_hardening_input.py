"""Issue 10 items 3 and 7 (and issue 12 item 11): control characters and non-ASCII where they would reach
an HTTP request are 400s, hookInstance is a UUID, client values are logged bounded and escaped, a trailing
slash is never redirected to a Host-header URL, and CORS headers come from settings."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))

import service_payloads as p
from service_harness import RecordingServer

from ccsvi_cds.service.app import create_app
from ccsvi_cds.service.logs import JsonFormatter
from ccsvi_cds.service.settings import ServiceSettings

SIGN = "/cds-services/ccsvi-order-sign"


@pytest.fixture(scope="module")
def ehr() -> Iterator[RecordingServer]:
    server = RecordingServer(lambda path: (200, orjson.dumps(p.bundle([])), {"Content-Type": "application/json"}))
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(ehr: RecordingServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = ServiceSettings(allow_fhir_servers=[ehr.base + "/fhir"], cors_origins=["https://ehr.example"],
                               db_path=tmp_path_factory.mktemp("input") / "db.sqlite3")
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8080") as c:
        yield c


def post(client: TestClient, body: Any, path: str = SIGN, **kw: Any) -> Any:
    return client.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}, **kw)


def issue(resp: Any) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/fhir+json"), resp.text
    issue: dict[str, Any] = resp.json()["issue"][0]
    return issue


@pytest.mark.parametrize("server", ["http://{h}/fhir\r\nX-Injected: 1", "http://{h}/fhir\n", "http://{h}/fh\tir",
                                    "http://{h}/fhir\x00", "http://{h}/f\u00efhir", "http://{h}/fhir /x",
                                    " http://{h}/fhir", "http://{h}:/fhir\x7f"])
def test_control_characters_in_fhir_server_are_a_400(client: TestClient, ehr: RecordingServer, server: str) -> None:
    req = p.order_sign(fhirServer=server.format(h=ehr.base.removeprefix("http://")))
    del req["prefetch"]
    resp = post(client, req)
    assert resp.status_code == 400 and issue(resp)["expression"] == ["fhirServer"]
    assert ehr.requests == []


@pytest.mark.parametrize("token", ["caf\u00e9", "tok en", "tok\r\nX-Injected: 1", "tok\x00", "\u2603", "\t"])
def test_a_token_that_cannot_be_an_http_header_is_a_400(client: TestClient, ehr: RecordingServer, token: str) -> None:
    req = p.order_sign(fhirServer=ehr.base + "/fhir",
                       fhirAuthorization={"access_token": token, "token_type": "Bearer", "expires_in": 60,
                                          "scope": "patient/*.read", "subject": "cds"})
    del req["prefetch"]
    resp = post(client, req)
    assert resp.status_code == 400 and issue(resp)["expression"] == ["fhirAuthorization.access_token"]
    assert ehr.requests == []


@pytest.mark.parametrize("instance", ["x", "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea-again", "a" * 100_000,
                                      "d1577c69\x00dfbe-44ad-ba6d-3e05e953b2ea", "{d1577c69-dfbe-44ad-ba6d-3e05e953b2ea}",
                                      "d1577c69dfbe44adba6d3e05e953b2ea "])
def test_hook_instance_must_be_a_uuid(client: TestClient, instance: str) -> None:
    resp = post(client, p.order_sign(hookInstance=instance))
    assert resp.status_code == 400 and issue(resp)["expression"] == ["hookInstance"]
    assert len(instance) < 8 or instance not in resp.text


def test_a_uuid_hook_instance_in_any_case_is_accepted(client: TestClient) -> None:
    assert post(client, p.order_sign(hookInstance="D1577C69-DFBE-44AD-BA6D-3E05E953B2EA")).status_code == 200


def test_log_values_are_bounded_and_escaped() -> None:
    record = logging.LogRecord("ccsvi_cds.service", logging.INFO, __file__, 1, "request\r\nforged", (), None)
    record.hookInstance = "\x00\r\n" + "a" * 100_000
    record.rules = ["r\n" * 10] * 1000
    line = JsonFormatter().format(record)
    assert len(line) < 20_000
    out = orjson.loads(line)
    assert out["msg"] == "request\\r\\nforged"
    assert out["hookInstance"].startswith("\\x00\\r\\naaa") and out["hookInstance"].endswith("(+99803 chars)")
    assert len(out["rules"]) == 50 and "\n" not in out["rules"][0]


def test_request_log_never_holds_a_long_or_raw_client_value(client: TestClient,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ccsvi_cds.service"):
        post(client, p.order_sign(hookInstance="\x00" + "z" * 100_000))
        client.post("/cds-services/" + "y" * 5000 + "%00", content=b"{}")
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert lines and all(len(line) < 2000 and "\\u0000" not in line and "zzzz" not in line for line in lines)


@pytest.mark.parametrize("path", ["/cds-services/", "/cds-services/ccsvi-order-sign/", "/health/",
                                  "/cds-services/ccsvi-order-sign/feedback/"])
def test_trailing_slash_is_404_never_a_redirect_from_the_host_header(client: TestClient, path: str) -> None:
    for method in ("GET", "POST"):
        resp = client.request(method, path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert resp.status_code in (404, 405) and "location" not in resp.headers
        assert "evil.example" not in resp.text


def test_cors_preflight_allows_the_configured_origin_and_x_request_id(client: TestClient) -> None:
    resp = client.options(SIGN, headers={"Origin": "https://ehr.example", "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "authorization, content-type, x-request-id"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://ehr.example"
    assert "x-request-id" in resp.headers["access-control-allow-headers"].lower()
    other = client.options(SIGN, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400


def test_cors_headers_come_from_settings(tmp_path: Path) -> None:
    settings = ServiceSettings(cors_origins=["https://a.example"], cors_headers=["X-Trace"], db_path=tmp_path / "d")
    with TestClient(create_app(settings)) as c:
        ok = c.options(SIGN, headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "x-trace"})
        refused = c.options(SIGN, headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "x-request-id"})
    assert ok.status_code == 200 and refused.status_code == 400
