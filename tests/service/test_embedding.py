"""Embedding: the service mounted under a prefix in a host Starlette app (in process, lifespan wired as the
README says), and the Python evaluation API run exactly as the README shows it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import service_payloads as p
from cdshooks_checks import cards_of, outcome
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from inprocess import settings_from

from ccsvi_cds.service.app import create_app, service_lifespan
from ccsvi_cds.service.replay import replay_path

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "https://ehr-portal.example.org"
BASE = ORIGIN + "/cds"  # base_url = where the host mounts the service
ISS = "https://ehr.example.org"
SIGN = "/cds-services/ccsvi-order-sign"


def token(key: Any, aud: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}, key,
                      algorithm="ES384", headers={"kid": "ec-1"})


def auth(key: Any, aud: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(key, aud)}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, ec_key: Any) -> Iterator[dict[str, str]]:
    public = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    issuers = [{"iss": ISS, "jwks": {"keys": [{**public, "kid": "ec-1", "alg": "ES384"}]}}]
    db = tmp_path_factory.mktemp("embed") / "service.sqlite3"
    yield {"CCSVI_DB_PATH": str(db), "CCSVI_BASE_URL": BASE, "CCSVI_TRUSTED_ISSUERS": json.dumps(issuers)}
    for leftover in replay_path(db).parent.glob(replay_path(db).name + "*"):
        leftover.unlink()


def host_app(env: dict[str, str], wire_lifespan: bool = True) -> Starlette:
    """A host application as the README's Embedding section writes it: its own route, the service at /cds."""
    cds = create_app(settings_from(env))

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("host home")

    return Starlette(routes=[Route("/", home), Mount("/cds", app=cds)],
                     lifespan=(lambda _app: service_lifespan(cds)) if wire_lifespan else None)


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(host_app(env), base_url=ORIGIN, raise_server_exceptions=False) as c:
        yield c


def test_the_mounted_service_answers_discovery_hooks_feedback_and_pages(client: TestClient, ec_key: Any) -> None:
    assert client.get("/").text == "host home"
    found = client.get("/cds/cds-services", headers=auth(ec_key, BASE + "/cds-services"))
    assert found.status_code == 200, found.text
    assert {s["id"] for s in found.json()["services"]} == {"ccsvi-order-select", "ccsvi-order-sign"}

    resp = client.post("/cds" + SIGN, content=json.dumps(p.order_sign()), headers=auth(ec_key, BASE + SIGN))
    cards = cards_of(resp)
    assert [c["source"]["topic"]["code"] for c in cards] == ["venous-angioplasty-ms"]
    links = [link["url"] for c in cards for link in c.get("links", []) if "/patient-info/" in link["url"]]
    assert links and all(u.startswith(BASE + "/patient-info/") for u in links)  # links point into the mount
    page = client.get(links[0].removeprefix(ORIGIN))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")

    feedback = {"feedback": [{"card": cards[0]["uuid"], "outcome": "accepted",
                              "outcomeTimestamp": "2026-11-21T10:05:31Z"}]}
    stored = client.post("/cds" + SIGN + "/feedback", content=json.dumps(feedback),
                         headers=auth(ec_key, BASE + SIGN + "/feedback"))
    assert stored.status_code == 200 and stored.json() == {"stored": 1, "duplicates": 0, "unmatchedCards": 0}

    health = client.get("/cds/health")
    assert health.status_code == 200 and health.json()["auth"] == "jwt"
    assert client.get("/cds/metrics").status_code == 200


def test_jwt_audience_is_the_full_url_as_called(client: TestClient, ec_key: Any) -> None:
    body = json.dumps(p.order_sign())
    without_prefix = client.post("/cds" + SIGN, content=body, headers=auth(ec_key, ORIGIN + SIGN))
    assert "expected " + BASE + SIGN in outcome(without_prefix, 401)[0]["diagnostics"]
    doubled = client.post("/cds" + SIGN, content=body, headers=auth(ec_key, BASE + "/cds" + SIGN))
    outcome(doubled, 401)
    assert client.post("/cds" + SIGN, content=body, headers=auth(ec_key, BASE + SIGN)).status_code == 200


def test_a_host_that_does_not_run_the_lifespan_gets_a_503_that_says_so(env: dict[str, str]) -> None:
    with TestClient(host_app(env, wire_lifespan=False), base_url=ORIGIN, raise_server_exceptions=False) as c:
        issues = outcome(c.get("/cds/health"), 503)
    assert "lifespan" in issues[0]["diagnostics"] and "Embedding" in issues[0]["diagnostics"]


def readme_block(marker: str) -> str:
    found = re.findall(rf"^```{marker}\n(.*?)^```", (REPO / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    assert len(found) == 1, f"README has {len(found)} ```{marker} blocks"
    return str(found[0])


def test_the_readme_python_api_example_runs_as_written() -> None:
    code = readme_block("python api-example")
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "venous-stent-ms critical ServiceRequest/sr-3001", run.stdout
    assert lines[1].startswith("1 card(s); the first: Venous stenting for CCSVI in MS: "), run.stdout
    assert lines[2:] == ["venous-stent-ms ServiceRequest/sr-1002"], run.stdout
