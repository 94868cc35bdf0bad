"""CDS Hooks JWT verification on a 2-worker server: good tokens pass, every attack gets 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import service_payloads as p
from cdshooks_checks import cards_of, outcome
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from service_harness import FakeFhir, Service, free_port

EXAMPLES = Path(__file__).resolve().parent / "spec_examples"  # copied from the CDS Hooks 2.0.1 specification
SIGN = "/cds-services/ccsvi-order-sign"
ISS = "https://ehr.example.org"
RSA_ISS = "https://ehr-rsa.example.org"
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"
DEAD_ISS = "https://ehr-keys-down.example.org"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def jwks_urls(fhir: FakeFhir, ec_key: Any) -> dict[str, str]:
    public = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    fhir.jwks["/jwks/ec.json"] = {"keys": [{**public, "kid": "ec-1", "alg": "ES384", "use": "sig"}]}
    return {"good": fhir.base + "/jwks/ec.json", "evil": fhir.base + "/jwks/evil.json"}


@pytest.fixture(scope="module")
def svc(service_factory: Any, jwks_urls: dict[str, str], rsa_key: Any) -> Service:
    rsa_public = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    spec_jwks = json.loads((EXAMPLES / "spec-2.0.1-example-24.json").read_text())
    issuers = [
        {"iss": ISS, "jku": [jwks_urls["good"]]},
        {"iss": RSA_ISS, "jwks": {"keys": [{**rsa_public, "kid": "rsa-1", "alg": "RS384"}]}},
        {"iss": SPEC_ISS, "jku": [SPEC_JKU], "jwks": spec_jwks},
        {"iss": DEAD_ISS, "jku": [f"http://127.0.0.1:{free_port()}/jwks.json"]},
    ]
    return service_factory({"CCSVI_TRUSTED_ISSUERS": json.dumps(issuers), "CCSVI_WORKERS": "2"})


def claims(svc: Service, path: str = SIGN, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": svc.url + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def es384(svc: Service, ec_key: Any, jku: str | None, path: str = SIGN, **over: Any) -> str:
    headers = {"kid": "ec-1", "typ": "JWT", **({"jku": jku} if jku else {})}
    return jwt.encode(claims(svc, path, **over), ec_key, algorithm="ES384", headers=headers)


def call(svc: Service, token: str | None, path: str = SIGN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path == SIGN:
        return svc.post(SIGN, p.order_sign(), headers=headers)
    return svc.client.get(path, headers=headers)


def refused(resp: Any, fragment: str) -> None:
    issues = outcome(resp, 401)
    assert fragment in issues[0]["diagnostics"], issues
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_valid_es384_token_from_allowlisted_jku(svc: Service, ec_key: Any, jwks_urls: dict[str, str]) -> None:
    assert len(cards_of(call(svc, es384(svc, ec_key, jwks_urls["good"])))) == 1


def test_valid_es384_token_without_jku_uses_the_issuers_jwks(svc: Service, ec_key: Any) -> None:
    assert len(cards_of(call(svc, es384(svc, ec_key, None)))) == 1


def test_valid_rs384_token_with_configured_jwks(svc: Service, rsa_key: Any) -> None:
    token = jwt.encode(claims(svc, iss=RSA_ISS), rsa_key, algorithm="RS384", headers={"kid": "rsa-1"})
    assert len(cards_of(call(svc, token))) == 1


def test_discovery_and_feedback_need_a_token_health_does_not(svc: Service, ec_key: Any) -> None:
    refused(call(svc, None, "/cds-services"), "missing")
    ok = call(svc, es384(svc, ec_key, None, "/cds-services"), "/cds-services")
    assert ok.status_code == 200 and len(ok.json()["services"]) == 2
    refused(svc.post(SIGN + "/feedback", {"feedback": []}), "missing")
    assert svc.client.get("/health").json()["auth"] == "jwt"


def test_missing_or_malformed_authorization(svc: Service) -> None:
    refused(call(svc, None), "missing")
    refused(svc.post(SIGN, p.order_sign(), headers={"Authorization": "Basic dXNlcjpwdw=="}), "Bearer")
    refused(call(svc, "not.a.jwt"), "well-formed")


def test_alg_none_is_refused(svc: Service) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims(svc)).encode())
    refused(call(svc, f"{header}.{body}."), "'none' is refused")


def test_hs256_signed_with_the_public_key_is_refused(svc: Service, ec_key: Any, rsa_key: Any) -> None:
    for iss, key in ((ISS, ec_key), (RSA_ISS, rsa_key)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = (b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + "."
                         + b64(json.dumps(claims(svc, iss=iss)).encode()))
        sig = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
        refused(call(svc, f"{signing_input}.{sig}"), "'HS256' is refused")


def test_expired_token_is_refused(svc: Service, ec_key: Any) -> None:
    now = int(time.time())
    refused(call(svc, es384(svc, ec_key, None, exp=now - 600, iat=now - 900)), "expired")


def test_wrong_audience_is_refused(svc: Service, ec_key: Any) -> None:
    refused(call(svc, es384(svc, ec_key, None, aud=svc.url + "/cds-services/ccsvi-order-select")), "aud")
    refused(call(svc, es384(svc, ec_key, None, aud="https://cds.example.org/cds-services/ccsvi-order-sign")), "aud")


def test_unknown_issuer_is_refused(svc: Service, ec_key: Any) -> None:
    refused(call(svc, es384(svc, ec_key, None, iss="https://attacker.example")), "not a trusted")


def test_jku_not_allowed_is_refused_without_fetching(svc: Service, ec_key: Any, fhir: FakeFhir,
                                                     jwks_urls: dict[str, str]) -> None:
    fhir.jwks["/jwks/evil.json"] = fhir.jwks["/jwks/ec.json"]  # same key: only the allowlist stops it
    fhir.requests.clear()
    refused(call(svc, es384(svc, ec_key, jwks_urls["evil"])), "jku")
    assert all(r["path"] != "/jwks/evil.json" for r in fhir.requests)


def test_replayed_jti_is_refused_on_any_worker(svc: Service, ec_key: Any) -> None:
    token = es384(svc, ec_key, None)
    assert call(svc, token).status_code == 200
    for _ in range(4):  # new connections: the replay may reach either worker process
        refused(call(svc, token), "already used")


def test_missing_claims_and_bad_signatures(svc: Service, ec_key: Any) -> None:
    refused(call(svc, es384(svc, ec_key, None, jti=None)), "jti")
    refused(call(svc, es384(svc, ec_key, None, exp=None)), "exp")
    token = es384(svc, ec_key, None)
    head, body, sig = token.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(body + "=="))
    tampered["iss"] = ISS
    tampered["jti"] = str(uuid.uuid4())
    refused(call(svc, f"{head}.{b64(json.dumps(tampered).encode())}.{sig}"), "signature")


def test_unknown_kid_is_refused(svc: Service, ec_key: Any) -> None:
    token = jwt.encode(claims(svc), ec_key, algorithm="ES384", headers={"kid": "nope"})
    refused(call(svc, token), "kid")


def test_overlong_lifetime_is_refused(svc: Service, ec_key: Any) -> None:
    now = int(time.time())
    refused(call(svc, es384(svc, ec_key, None, iat=now, exp=now + 86400)), "lifetime")


def test_tokens_never_reach_the_log(svc: Service, ec_key: Any) -> None:
    token = es384(svc, ec_key, None)
    call(svc, token)
    call(svc, token)
    log = svc.log_text()
    assert token not in log and token.split(".")[2] not in log


def test_spec_example_key_and_header_shape(svc: Service) -> None:
    """The 2.0.1 example: header 22, payload 23 (expired in 2015: refused), key 25 (JWKS 24)."""
    header = json.loads((EXAMPLES / "spec-2.0.1-example-22.json").read_text())
    payload = json.loads((EXAMPLES / "spec-2.0.1-example-23.json").read_text())
    key = jwt.PyJWK(json.loads((EXAMPLES / "spec-2.0.1-example-25.json").read_text())).key
    expired = jwt.encode(payload, key, algorithm="ES384", headers=header)
    refused(call(svc, expired), "expired")
    fresh = {**payload, **claims(svc, iss=SPEC_ISS), "tenant": payload["tenant"]}
    assert call(svc, jwt.encode(fresh, key, algorithm="ES384", headers=header)).status_code == 200


def test_unreachable_jwks_is_refused(svc: Service, ec_key: Any) -> None:
    refused(call(svc, es384(svc, ec_key, None, iss=DEAD_ISS)), "could not fetch the issuer's JWKS")
