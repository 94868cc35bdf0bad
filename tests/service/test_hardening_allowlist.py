"""Issue 10 item 2: the FHIR server allowlist cannot be escaped with dot segments, encoded dots or slashes,
userinfo or ports, neither in fhirServer nor in prefetch `next` links nor in a server's own `next` links.
A real FHIR server on loopback records every path it is asked for and the token it was sent."""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))

import service_payloads as p
from service_harness import RecordingServer

from ccsvi_cds.service.app import create_app
from ccsvi_cds.service.fhir_client import ServerAllowlist, canonical_url, resolve, under
from ccsvi_cds.service.settings import ServiceSettings

SIGN = "/cds-services/ccsvi-order-sign"
TOKEN = "secret-fhir-token"


class Ehr:
    """A FHIR server answering every search with an empty page whose `next` link is `next_link`."""

    def __init__(self) -> None:
        self.next_link: str | None = None
        self.server = RecordingServer(self._respond)
        self.base = self.server.base

    def _respond(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        page = p.bundle([])
        if self.next_link and "page=" not in path:
            page["link"] = [{"relation": "next", "url": self.next_link}]
        return 200, orjson.dumps(page), {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def ehr() -> Iterator[Ehr]:
    server = Ehr()
    yield server
    server.server.close()


@pytest.fixture(scope="module")
def client(ehr: Ehr, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = ServiceSettings(allow_fhir_servers=[ehr.base + "/fhir"],
                               db_path=tmp_path_factory.mktemp("allow") / "db.sqlite3")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh(ehr: Ehr) -> None:
    ehr.server.requests.clear()
    ehr.next_link = None


def _outside_fhir(ehr: Ehr) -> list[dict[str, Any]]:
    """Requests whose path, as any server could read it (decoded, dot segments applied), is not under /fhir/."""
    out = []
    for req in ehr.server.requests:
        path = urlsplit(req["path"]).path
        seen = posixpath.normpath(unquote(unquote(path)).replace("\\", "/"))
        if not seen.startswith("/fhir/"):
            out.append(req)
    return out


def call(client: TestClient, **extra: Any) -> Any:
    req = p.order_sign(**extra)
    if "prefetch" not in extra:  # nothing sent: everything is read from fhirServer
        del req["prefetch"]
    req["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                "scope": "patient/*.read", "subject": "cds"}
    return client.post(SIGN, content=orjson.dumps(req), headers={"Content-Type": "application/json"})


ESCAPES = [
    "/fhir/../x", "/fhir/./../x", "/fhir/x/../../x", "/fhir/%2e%2e/x", "/fhir/%2E%2E/x", "/fhir/.%2e/x",
    "/fhir/%2e./x", "/fhir/..%2fx", "/fhir/..%2Fx", "/fhir/..%5cx", "/fhir/%252e%252e/x", "/fhir\\..\\x",
    "/fhirx", "/fhir/..", "/x/../fhir/../x", "/fhir/..;/x", "/fhir/..%3b/x", "/fhir/.;/../x",
]


@pytest.mark.parametrize("suffix", ESCAPES)
def test_fhir_server_escaping_the_allowed_prefix_is_refused_and_nothing_is_fetched(
        client: TestClient, ehr: Ehr, suffix: str) -> None:
    resp = call(client, fhirServer=ehr.base + suffix)
    assert resp.status_code == 400, resp.text
    assert resp.json()["issue"][0]["expression"] == ["fhirServer"]
    assert ehr.server.requests == []


@pytest.mark.parametrize("server", ["http://user:pw@{host}/fhir", "http://user@{host}/fhir",
                                    "http://{host}@evil.example/fhir", "http://{host}/fhir\r\n/x",
                                    "http://{host}/fhir\t", "http://{host}/fhir?x=1"])
def test_fhir_server_with_userinfo_or_odd_characters_is_refused(client: TestClient, ehr: Ehr, server: str) -> None:
    resp = call(client, fhirServer=server.format(host=ehr.base.removeprefix("http://")))
    assert resp.status_code == 400, resp.text
    assert ehr.server.requests == []


def test_an_allowed_server_in_another_spelling_is_read_only_under_its_prefix(client: TestClient, ehr: Ehr) -> None:
    resp = call(client, fhirServer=ehr.base.replace("http://", "HTTP://") + "/fhir/./sub/../")
    assert resp.status_code == 200, resp.text
    assert len(ehr.server.requests) == 3 and _outside_fhir(ehr) == []
    assert {r["authorization"] for r in ehr.server.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("suffix", ["/fhir/../x/Condition?page=1", "/fhir/%2e%2e/x/Condition?page=1",
                                    "/fhir/..%2fx/Condition?page=1", "/fhir/Condition/../../x?page=1"])
def test_prefetch_next_link_escaping_the_prefix_is_refused(client: TestClient, ehr: Ehr, suffix: str) -> None:
    prefetch = {**p.full_prefetch(), "conditions": p.bundle(p.five_conditions(), next_url=ehr.base + suffix)}
    resp = call(client, fhirServer=ehr.base + "/fhir", prefetch=prefetch)
    assert resp.status_code == 400, resp.text
    assert ehr.server.requests == []


@pytest.mark.parametrize("link", ["../x/Condition?page=1", "../../x?page=1", "%2e%2e/x?page=1",
                                  "..%2fx?page=1", "/../x?page=1", "{base}/fhir/../x?page=1",
                                  "{base}/fhir/%2E%2E/x?page=1", "http://other.invalid/fhir/Condition?page=1"])
def test_a_servers_next_link_out_of_the_prefix_is_not_followed(client: TestClient, ehr: Ehr, link: str) -> None:
    ehr.next_link = link.format(base=ehr.base)
    resp = call(client, fhirServer=ehr.base + "/fhir")
    assert resp.status_code == 412, resp.text
    assert "leaves the FHIR server" in resp.text
    assert ehr.server.requests and _outside_fhir(ehr) == []


def test_a_servers_relative_next_link_inside_the_prefix_is_followed(client: TestClient, ehr: Ehr) -> None:
    ehr.next_link = "Condition?patient=pat-ms-1&page=2"
    resp = call(client, fhirServer=ehr.base + "/fhir")
    assert resp.status_code == 200, resp.text
    assert "/fhir/Condition?patient=pat-ms-1&page=2" in ehr.server.paths()
    assert _outside_fhir(ehr) == [] and {r["authorization"] for r in ehr.server.requests} == {f"Bearer {TOKEN}"}


def test_normal_form() -> None:
    assert canonical_url("HTTP://EHR.example:80/fhir/./a/../Patient") == "http://ehr.example/fhir/Patient"
    assert canonical_url("https://ehr.example:443/fhir/%7e%41") == "https://ehr.example/fhir/~A"
    assert canonical_url("http://ehr.example/fhir/%3a") == "http://ehr.example/fhir/%3A"
    for bad in ["http://u@ehr.example/fhir", "ftp://ehr.example/fhir", "http://ehr.example/fhir/%2F",
                "http://ehr.example/fhir/%zz", "http://ehr.example:99999/", "http://ehr.example/f\u00e9",
                "http://ehr.example/fhir\x00", "http:///fhir", ""]:
        assert canonical_url(bad) is None, bad
    allow = ServerAllowlist(["https://ehr.example/fhir/r4"])
    assert allow.allows("https://EHR.example:443/fhir/r4/") and allow.allows("https://ehr.example/fhir/r4/x/..")
    for bad in ["https://ehr.example:8443/fhir/r4", "http://ehr.example/fhir/r4", "https://ehr.example/fhir/r4x",
                "https://ehr.example/fhir/r4/..", "https://ehr.example/fhir/r4/%2e%2e/r5",
                "https://a@ehr.example/fhir/r4"]:
        assert not allow.allows(bad), bad
    assert under("http://a/fhir", "http://a:80/fhir/x") and not under("http://a/fhir", "http://a/fhir/../x")
    assert resolve("http://a/fhir", "../x") == "http://a/x"
    assert resolve("http://a/fhir", "/Condition?p=1") == "http://a/fhir/Condition?p=1"
