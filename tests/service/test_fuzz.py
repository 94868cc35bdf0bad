"""Issue 10 item 3: a property-based fuzz (Hypothesis, fixed seed) of every request field of every endpoint:
discovery, both hooks, feedback, health, the patient pages, the Authorization header. No input may produce
a 5xx (an exception escaping the app fails too). In process (httpx ASGITransport on one event loop, the app's
lifespan run as uvicorn would), with a real FHIR server on loopback for the reads a request causes; 10,000
generated requests in all (`QUOTA`), counted and checked."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).parent))

import service_payloads as p
from service_harness import RecordingServer

from ccsvi_cds.service.app import create_app
from ccsvi_cds.service.replay import replay_path
from ccsvi_cds.service.settings import ServiceSettings

SEED = 20261202
QUOTA = {"order-sign": 2500, "order-select": 1500, "feedback": 1500, "raw": 1000, "get": 1500, "auth": 2000}
assert sum(QUOTA.values()) >= 10_000
pytestmark = [pytest.mark.xdist_group("fuzz"), pytest.mark.timeout(900)]  # 10,000 requests: minutes under load
ISS = "https://ehr.example.org"
SERVICES = ["ccsvi-order-sign", "ccsvi-order-select"]


def fuzz_settings(n: int) -> Any:
    return settings(max_examples=n, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


class Sender:
    """Sends requests to the app in process, counts them and fails on any 5xx (with the request).

    One private event loop for the whole module: the lifespan (evaluator, store, HTTP client) is entered
    once, and each request is one `run_until_complete`, without a thread hand-off per request."""

    def __init__(self, app: Starlette) -> None:
        self.count = 0
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")
        self._lifespan = app.router.lifespan_context(app)
        self._loop.run_until_complete(self._lifespan.__aenter__())

    def close(self) -> None:
        self._loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    def __call__(self, method: str, path: str, content: bytes | None = None,
                 headers: dict[str, Any] | None = None) -> int:
        self.count += 1
        resp = self._loop.run_until_complete(self._client.request(method, path, content=content,
                                                                  headers=headers or {}))
        assert resp.status_code < 500, f"{method} {path} {headers!r} {content!r:.2000} -> {resp.status_code} {resp.text}"
        return resp.status_code


@pytest.fixture(scope="module")
def ehr() -> Iterator[RecordingServer]:
    server = RecordingServer(lambda path: (200, orjson.dumps(p.bundle([])), {"Content-Type": "application/json"}))
    yield server
    server.close()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _sender(settings_: ServiceSettings) -> Iterator[Sender]:
    sender = Sender(create_app(settings_))
    yield sender
    sender.close()
    for leftover in replay_path(settings_.db_path).parent.glob(replay_path(settings_.db_path).name + "*"):
        leftover.unlink()


@pytest.fixture(scope="module")
def send(ehr: RecordingServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sender]:
    s = ServiceSettings(allow_fhir_servers=[ehr.base + "/fhir"], fhir_timeout_s=2,
                        db_path=tmp_path_factory.mktemp("fuzz") / "db.sqlite3")
    yield from _sender(s)


@pytest.fixture(scope="module")
def send_auth(key: ec.EllipticCurvePrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sender]:
    jwks = {"keys": [{**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "ES384"}]}
    s = ServiceSettings(trusted_issuers=[{"iss": ISS, "jwks": jwks}], base_url="http://127.0.0.1:8080",
                        db_path=tmp_path_factory.mktemp("fuzz-auth") / "db.sqlite3")
    yield from _sender(s)


# --- values ---------------------------------------------------------------------------------------------

NASTY = ["", " ", "\r\n", "\t", "\x00", "\u202e", "\ud800", "a" * 5000, "../", "%2e%2e/", "..%2f", "\\",
         "http://127.0.0.1:1/fhir", "http://user:pw@127.0.0.1/fhir", "Patient/", "ServiceRequest/sr-ijv-pta",
         "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "1e400", "null", "{{context.patientId}}", "Bearer", "caf\u00e9"]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats() | st.text(max_size=40) | st.sampled_from(NASTY))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=6)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON document (objects and arrays too), root excluded."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw: Any, base: dict[str, Any], extra: list[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """`base` with 1-3 locations replaced by any JSON value, deleted, or given an extra key."""
    doc = copy.deepcopy(base)
    where = paths(doc) + (extra or [])
    for _ in range(draw(st.integers(1, 3))):
        loc = draw(st.sampled_from(where))
        parent: Any = doc
        try:
            for part in loc[:-1]:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        last = loc[-1]
        if isinstance(parent, dict) and action == "delete":
            parent.pop(last, None)
        elif isinstance(parent, dict) and action == "add":
            parent[draw(st.text(max_size=12))] = draw(json_values)
        elif isinstance(parent, (dict, list)):
            try:
                parent[last] = draw(json_values)
            except (IndexError, TypeError):
                continue
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()


def hook_base(ehr_base: str, hook: str) -> dict[str, Any]:
    req = p.order_sign() if hook == "order-sign" else p.order_select(["ServiceRequest/sr-ijv-pta"])
    req["fhirServer"] = ehr_base + "/fhir"
    req["fhirAuthorization"] = {"access_token": "tok", "token_type": "Bearer", "expires_in": 60,
                                "scope": "patient/*.read", "subject": "cds"}
    return req


JSON_HEADERS = {"Content-Type": "application/json"}


# --- the fuzz -------------------------------------------------------------------------------------------

def _hook_fuzz(send: Sender, ehr: RecordingServer, hook: str) -> None:
    base = hook_base(ehr.base, hook)
    no_prefetch = {k: v for k, v in base.items() if k != "prefetch"}

    @seed(SEED)
    @fuzz_settings(QUOTA[hook])
    @given(doc=st.one_of(mutated(base), mutated(base), mutated(base), mutated(no_prefetch)), service=st.sampled_from(SERVICES),
           suffix=st.sampled_from(["", "/", "/./", "/../x", "/%2e%2e", "?q=1", "#f", "/Condition"]))
    def run(doc: dict[str, Any], service: str, suffix: str) -> None:
        if isinstance(doc.get("fhirServer"), str) and doc["fhirServer"] == base["fhirServer"]:
            doc["fhirServer"] += suffix
        send("POST", f"/cds-services/{service}", encode(doc), JSON_HEADERS)

    start = send.count
    run()
    assert send.count - start >= QUOTA[hook]


def test_fuzz_order_sign(send: Sender, ehr: RecordingServer) -> None:
    _hook_fuzz(send, ehr, "order-sign")


def test_fuzz_order_select(send: Sender, ehr: RecordingServer) -> None:
    _hook_fuzz(send, ehr, "order-select")


def test_fuzz_feedback(send: Sender) -> None:
    base = {"feedback": [
        {"card": "2c8997f6-0000-4000-8000-000000000001", "outcome": "overridden",
         "outcomeTimestamp": "2026-11-21T10:05:31Z",
         "overrideReason": {"reason": {"system": "urn:ccsvi-cds:override-reason", "code": "approved-trial"},
                            "userComment": "in a trial"}},
        {"card": "2c8997f6-0000-4000-8000-000000000002", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "2c8997f6-0000-4000-8000-000000000003"}]}]}

    @seed(SEED)
    @fuzz_settings(QUOTA["feedback"])
    @given(doc=mutated(base), service=st.sampled_from([*SERVICES, "nope"]))
    def run(doc: dict[str, Any], service: str) -> None:
        send("POST", f"/cds-services/{service}/feedback", encode(doc), JSON_HEADERS)

    start = send.count
    run()
    assert send.count - start >= QUOTA["feedback"]


def test_fuzz_raw_bodies_and_content_types(send: Sender) -> None:
    bodies = st.binary(max_size=300) | json_values.map(encode) | st.text(max_size=200).map(
        lambda t: t.encode("utf-8", "surrogatepass"))
    targets = st.sampled_from([f"/cds-services/{s}" for s in SERVICES]
                              + [f"/cds-services/{s}/feedback" for s in SERVICES] + ["/cds-services"])

    ctypes = ["application/json", "text/plain", "", "application/json; charset=latin-1", "multipart/form-data"]

    @seed(SEED)
    @fuzz_settings(QUOTA["raw"])
    @given(body=bodies, path=targets, ctype=st.sampled_from(ctypes),
           method=st.sampled_from(["POST", "POST", "PUT", "GET", "DELETE", "PATCH"]))
    def run(body: bytes, path: str, ctype: str, method: str) -> None:
        send(method, path, body, {"Content-Type": ctype} if ctype else {})

    start = send.count
    run()
    assert send.count - start >= QUOTA["raw"]


header_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def test_fuzz_get_endpoints_paths_queries_and_headers(send: Sender) -> None:
    @seed(SEED)
    @fuzz_settings(QUOTA["get"])
    @given(route=st.sampled_from(["/cds-services", "/health", "/patient-info/", "/cds-services/"]),
           tail=st.text(max_size=40), query=st.text(max_size=40),
           headers=st.dictionaries(st.sampled_from(["accept", "origin", "x-request-id", "host", "cookie",
                                                    "access-control-request-method", "authorization"]),
                                   header_bytes, max_size=3),
           method=st.sampled_from(["GET", "GET", "HEAD", "OPTIONS"]))
    def run(route: str, tail: str, query: str, headers: dict[str, bytes], method: str) -> None:
        path = route + (quote(tail, safe="") if route.endswith("/") else "")
        send(method, f"{path}?{quote(query, safe='=&')}" if query else path, None, headers)

    start = send.count
    run()
    assert send.count - start >= QUOTA["get"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_fuzz_authorization_headers_and_forged_tokens(send_auth: Sender, key: ec.EllipticCurvePrivateKey) -> None:
    good_header = {"alg": "ES384", "kid": "k1", "typ": "JWT"}
    good_claims = {"iss": ISS, "aud": "http://127.0.0.1:8080/cds-services/ccsvi-order-sign", "exp": 4102444800,
                   "iat": 1700000000, "jti": "j"}
    def sign(header: dict[str, Any], claims: dict[str, Any], jti: str) -> str:
        try:
            return jwt.encode({**claims, "jti": jti}, key, algorithm="ES384", headers=header)
        except (TypeError, ValueError, jwt.PyJWTError, NotImplementedError):  # PyJWT refuses to sign it
            return jwt.encode({**good_claims, "jti": jti}, key, algorithm="ES384", headers=good_header)

    signed = st.builds(sign, mutated(good_header), mutated(good_claims), st.text(min_size=1, max_size=20))
    forged = st.builds(lambda h, c, s: f"{b64(encode(h))}.{b64(encode(c))}.{b64(s)}",
                       mutated(good_header) | json_values, mutated(good_claims) | json_values, st.binary(max_size=96))
    values = (st.builds(lambda t: b"Bearer " + t.encode(), signed | forged) | header_bytes
              | st.builds(lambda t: b"Bearer " + t, header_bytes))
    doc = p.order_sign()

    @seed(SEED)
    @fuzz_settings(QUOTA["auth"])
    @given(auth=values, target=st.sampled_from(["hook", "feedback", "discovery"]))
    def run(auth: bytes, target: str) -> None:
        if target == "discovery":
            send_auth("GET", "/cds-services", None, {"Authorization": auth})
        elif target == "feedback":
            send_auth("POST", "/cds-services/ccsvi-order-sign/feedback",
                 b'{"feedback": [{"card": "c", "outcome": "accepted"}]}', {**JSON_HEADERS, "Authorization": auth})
        else:
            send_auth("POST", "/cds-services/ccsvi-order-sign", encode(doc), {**JSON_HEADERS, "Authorization": auth})

    start = send_auth.count
    run()
    assert send_auth.count - start >= QUOTA["auth"]
