"""Issue 10 item 5: JWKS handling under a failing issuer, against a real JWKS host on loopback that counts
fetches: single flight, a bounded body read, the last good key set kept while the endpoint fails, and a
rotated key picked up at the next (rate-limited) refetch."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

sys.path.insert(0, str(Path(__file__).parent))

from service_harness import RecordingServer

from ccsvi_cds.service.errors import ServiceError
from ccsvi_cds.service.jwt_auth import MAX_JWKS_BYTES, JwtVerifier
from ccsvi_cds.service.replay import ReplayCache
from ccsvi_cds.service.settings import ServiceSettings

ISS = "https://ehr.example.org"
AUD = "http://127.0.0.1:8080/cds-services/ccsvi-order-sign"


class Issuer:
    """Signing keys by kid, and the JWKS host serving the public half of `published` (or a failure)."""

    def __init__(self) -> None:
        self.keys = {kid: ec.generate_private_key(ec.SECP384R1()) for kid in ("k1", "k2")}
        self.published = ["k1"]
        self.mode = "ok"  # ok | garbage | down | huge
        self.server = RecordingServer(self._respond)
        self.url = self.server.base + "/jwks.json"

    def _respond(self, path: str) -> tuple[int, Any, dict[str, str]]:
        if self.mode == "down":
            return 503, b"unavailable", {}
        if self.mode == "garbage":
            return 200, b"<html>not a key set</html>", {"Content-Type": "application/json"}
        if self.mode == "huge":  # 30 MiB, streamed without a Content-Length
            return 200, [b" " * (1 << 20)] * 30, {"Content-Type": "application/json"}
        keys = [{**ECAlgorithm.to_jwk(self.keys[k].public_key(), as_dict=True), "kid": k, "alg": "ES384"}
                for k in self.published]
        return 200, orjson.dumps({"keys": keys}), {"Content-Type": "application/json"}

    @property
    def fetches(self) -> int:
        return len(self.server.requests)

    def token(self, kid: str = "k1") -> str:
        now = int(time.time())
        return "Bearer " + jwt.encode({"iss": ISS, "aud": AUD, "exp": now + 300, "iat": now,
                                       "jti": str(uuid.uuid4())}, self.keys[kid], algorithm="ES384",
                                      headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    it = Issuer()
    yield it
    it.server.close()


def run(issuer: Issuer, tmp_path: Path, scenario: Any, **settings: Any) -> Any:
    """Run `scenario(verifier)` on an event loop with a verifier for `issuer` built from `settings`."""
    s = ServiceSettings(trusted_issuers=[{"iss": ISS, "jku": [issuer.url]}], db_path=tmp_path / "db", **settings)

    async def main() -> Any:
        replay = ReplayCache(tmp_path / "jti.sqlite3")
        async with httpx.AsyncClient(trust_env=False) as client:
            try:
                return await scenario(JwtVerifier(s, client, replay))
            finally:
                replay.close()

    return asyncio.run(main())


async def outcome(verifier: JwtVerifier, token: str) -> str:
    try:
        await verifier.verify(token, AUD)
        return "ok"
    except ServiceError as exc:
        return exc.problems[0].message


def test_eight_concurrent_requests_on_a_slow_endpoint_make_one_fetch(issuer: Issuer, tmp_path: Path) -> None:
    issuer.server.delay_s = 0.5

    async def scenario(v: JwtVerifier) -> list[str]:
        return await asyncio.gather(*(outcome(v, issuer.token()) for _ in range(8)))

    assert run(issuer, tmp_path, scenario) == ["ok"] * 8
    assert issuer.fetches == 1


def test_garbage_answers_are_fetched_once_per_interval_not_per_request(issuer: Issuer, tmp_path: Path) -> None:
    issuer.mode = "garbage"

    async def scenario(v: JwtVerifier) -> list[str]:
        return [await outcome(v, issuer.token()) for _ in range(10)]

    results = run(issuer, tmp_path, scenario, jwks_refetch_interval_s=60)
    assert all("no usable key" in r for r in results), results
    assert issuer.fetches == 1


def test_a_failing_endpoint_keeps_the_last_good_keys_within_the_max_age(issuer: Issuer, tmp_path: Path) -> None:
    async def scenario(v: JwtVerifier) -> list[str]:
        first = await outcome(v, issuer.token())
        issuer.mode = "down"
        await asyncio.sleep(1.1)  # past the 1 s ttl: the cache is stale, the endpoint down
        during = [await outcome(v, issuer.token()) for _ in range(5)]
        await asyncio.sleep(0.3)  # let the background refresh fail
        return [first, *during, await outcome(v, issuer.token())]

    assert run(issuer, tmp_path, scenario, jwks_cache_ttl_s=1, jwks_max_stale_s=3600,
               jwks_refetch_interval_s=0.5) == ["ok"] * 7
    assert issuer.fetches == 2  # the first fetch and one refresh: no fetch per request


def test_past_the_max_age_a_failing_endpoint_refuses(issuer: Issuer, tmp_path: Path) -> None:
    async def scenario(v: JwtVerifier) -> list[str]:
        first = await outcome(v, issuer.token())
        issuer.mode = "down"
        await asyncio.sleep(2.1)  # past ttl (1 s) and max age (2 s)
        return [first, await outcome(v, issuer.token())]

    first, later = run(issuer, tmp_path, scenario, jwks_cache_ttl_s=1, jwks_max_stale_s=2,
                       jwks_refetch_interval_s=0)
    assert first == "ok" and "HTTP 503" in later


def test_a_slow_endpoint_does_not_delay_requests_once_keys_are_known(issuer: Issuer, tmp_path: Path) -> None:
    async def scenario(v: JwtVerifier) -> tuple[list[str], int]:
        await outcome(v, issuer.token())
        issuer.server.delay_s = 3.0
        await asyncio.sleep(1.1)  # stale
        sent = issuer.server.sent
        results = await asyncio.gather(*(outcome(v, issuer.token()) for _ in range(8)))
        assert issuer.server.sent == sent  # answered before the refresh (held 3 s by the host) came back
        await asyncio.sleep(0.3)
        return results, issuer.fetches

    results, fetches = run(issuer, tmp_path, scenario, jwks_cache_ttl_s=1, jwks_refetch_interval_s=0.5,
                           fhir_timeout_s=5)
    assert results == ["ok"] * 8
    assert fetches == 2  # the first fetch, and one refresh in flight behind the requests


def test_a_huge_key_set_is_not_read_past_the_limit(issuer: Issuer, tmp_path: Path) -> None:
    issuer.mode = "huge"
    result = run(issuer, tmp_path, lambda v: outcome(v, issuer.token()))
    assert f"exceeds {MAX_JWKS_BYTES} bytes" in result
    time.sleep(0.5)
    assert issuer.server.sent < 8 * (1 << 20)  # the client stopped reading; the host could not send 30 MiB


def test_a_rotated_key_is_picked_up_at_the_next_refetch_and_unknown_kids_are_rate_limited(
        issuer: Issuer, tmp_path: Path) -> None:
    async def scenario(v: JwtVerifier) -> list[str]:
        before = await outcome(v, issuer.token("k1"))
        issuer.published = ["k2"]  # the issuer rotates its signing key
        await asyncio.sleep(0.6)  # past the refetch interval
        rotated = await outcome(v, issuer.token("k2"))
        unknown = [await outcome(v, issuer.token("k1")) for _ in range(20)]  # k1 is gone now
        return [before, rotated, *unknown]

    results = run(issuer, tmp_path, scenario, jwks_refetch_interval_s=0.5)
    assert results[:2] == ["ok", "ok"]
    assert all("no key of the issuer matches" in r for r in results[2:])
    assert issuer.fetches <= 3  # the first, the rotation, at most one more for 20 unknown-kid tokens


def test_the_default_refetch_interval_picks_up_a_rotated_key_within_5_s() -> None:
    assert ServiceSettings().jwks_refetch_interval_s <= 5


@pytest.mark.parametrize("alg", [{"\u0100": None}, ["ES384"], "caf\u00e9", "HS256\r\nX: 1", "\u2603" * 40])
def test_a_refusal_never_puts_client_text_in_a_header(issuer: Issuer, tmp_path: Path, alg: Any) -> None:
    """Found by the fuzz: a JWT `alg` of {"\u0100": null} was echoed into WWW-Authenticate (a 500)."""
    forged = ".".join(base64.urlsafe_b64encode(orjson.dumps(part)).rstrip(b"=").decode()
                      for part in ({"alg": alg, "kid": "k1"}, {"iss": ISS})) + ".c2ln"

    async def scenario(v: JwtVerifier) -> ServiceError:
        with pytest.raises(ServiceError) as refused:
            await v.verify("Bearer " + forged, AUD)
        return refused.value

    error = run(issuer, tmp_path, scenario)
    assert error.status == 401
    header = error.headers["WWW-Authenticate"]
    assert header.isascii() and header.isprintable() and "\u0100" not in header
