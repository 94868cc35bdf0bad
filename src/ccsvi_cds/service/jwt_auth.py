"""CDS Hooks JWT verification (spec 2.0 "Trusting CDS Clients").

Only asymmetric algorithms are accepted (`none` and HMAC are refused before any key is looked at, which
also stops the "HS256 signed with the public key" confusion). The issuer must be configured; its keys
come from a configured JWKS or from a `jku` URL on that issuer's allowlist (never from a URL the token
alone chooses). `aud` must be the exact URL of the endpoint called; `exp`, `iat` and `jti` are required
and a `jti` is accepted once. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from .bounded import read_bounded
from .errors import Problem, ServiceError
from .logs import log
from .replay import ReplayCache
from .settings import ServiceSettings, TrustedIssuer

ALLOWED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
MAX_JWKS_BYTES = 256_000
JWKS_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}  # no decompression bomb


def unauthorized(message: str) -> ServiceError:
    safe = message.encode("ascii", "backslashreplace").decode().replace('"', "'").replace("\\", "/")[:300]
    return ServiceError(401, Problem(message, code="login"),
                        {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'})


@dataclass
class _Source:
    """One JWKS URL: the last good key set, when it was fetched, and the fetch in flight (if any)."""

    keys: jwt.PyJWKSet | None = None
    fetched_at: float = -math.inf
    attempted_at: float = -math.inf
    error: str = "could not fetch the issuer's JWKS"
    fetch: asyncio.Task[None] | None = None


class JwksCache:
    """JWKS documents by URL, fetched only for URLs the caller has allowed.

    A fresh set (younger than `ttl`) is used as is; an older one is still used, up to `max_stale`, while
    one fetch refreshes it in the background, so a slow or failing endpoint delays no request and the
    last good keys keep working. Fetches are single-flight (concurrent requests wait for the same one)
    and rate-limited per URL (`min_interval`: an unknown `kid` or a failed fetch cannot make every request
    fetch), and the body is read only up to MAX_JWKS_BYTES.
    """

    def __init__(self, client: httpx.AsyncClient, ttl: float, timeout: float, max_stale: float = 86400.0,
                 min_interval: float = 2.0) -> None:
        self._client = client
        self._ttl = ttl
        self._max_stale = max(max_stale, ttl)
        self._min_interval = min_interval
        self._timeout = timeout
        self._sources: dict[str, _Source] = {}

    async def get(self, url: str, refresh: bool = False) -> jwt.PyJWKSet:
        """The key set at `url`; `refresh`: the caller missed a key (rotation?), fetch unless just fetched."""
        src = self._sources.setdefault(url, _Source())
        age = time.monotonic() - src.fetched_at
        if src.keys is not None and not refresh and age < self._max_stale:
            if age >= self._ttl:
                self._start(url, src)  # refresh behind the request
            return src.keys
        fetch = self._start(url, src)
        if fetch is not None:
            await asyncio.shield(fetch)  # one client going away does not cancel the others' fetch
        if src.keys is not None and time.monotonic() - src.fetched_at < self._max_stale:
            return src.keys
        raise unauthorized(src.error)

    def _start(self, url: str, src: _Source) -> asyncio.Task[None] | None:
        """The fetch in flight, a new one if the last attempt is old enough, else None (rate-limited)."""
        if src.fetch is not None and not src.fetch.done():
            return src.fetch
        now = time.monotonic()
        if now - src.attempted_at < self._min_interval:
            return None
        src.attempted_at = now
        src.fetch = asyncio.create_task(self._fetch(url, src))
        return src.fetch

    async def _fetch(self, url: str, src: _Source) -> None:
        try:
            raw = await self._download(url)
            keys = _keyset(raw)
        except Exception as exc:  # noqa: BLE001 - a background task: every failure is recorded, none escapes
            src.error = (exc.problems[0].message if isinstance(exc, ServiceError)
                         else f"could not read the issuer's JWKS ({type(exc).__name__})")
            log.warning("JWKS fetch failed", extra={"jwks_url": url, "problem": src.error,
                                                    "using_last_good": src.keys is not None})
            return
        src.keys, src.fetched_at = keys, time.monotonic()

    async def _download(self, url: str) -> bytes:
        def too_large() -> Exception:
            return unauthorized(f"the issuer's JWKS exceeds {MAX_JWKS_BYTES} bytes")

        try:
            async with self._client.stream("GET", url, timeout=self._timeout, headers=JWKS_HEADERS) as resp:
                if resp.status_code != 200:
                    raise unauthorized(f"could not fetch the issuer's JWKS (HTTP {resp.status_code})")
                body = await read_bounded(resp.aiter_raw(), resp.headers.get("content-length"), MAX_JWKS_BYTES,
                                          too_large)
        except httpx.HTTPError as exc:
            raise unauthorized(f"could not fetch the issuer's JWKS ({type(exc).__name__})") from None
        return bytes(body)


def _keyset(raw: bytes | dict[str, Any]) -> jwt.PyJWKSet:
    try:
        data = orjson.loads(raw) if isinstance(raw, bytes) else raw
        return jwt.PyJWKSet.from_dict(data)
    except (orjson.JSONDecodeError, jwt.PyJWKSetError, jwt.InvalidKeyError, TypeError, KeyError, ValueError):
        raise unauthorized("the issuer's JWKS holds no usable key") from None


class JwtVerifier:
    def __init__(self, settings: ServiceSettings, client: httpx.AsyncClient, replay: ReplayCache) -> None:
        self._issuers: dict[str, TrustedIssuer] = {i.iss: i for i in settings.trusted_issuers}
        self._static: dict[str, jwt.PyJWKSet] = {}
        for issuer in settings.trusted_issuers:
            if issuer.jwks is not None:
                self._static[issuer.iss] = jwt.PyJWKSet.from_dict(issuer.jwks)
            elif issuer.jwks_file is not None:
                self._static[issuer.iss] = jwt.PyJWKSet.from_dict(orjson.loads(Path(issuer.jwks_file).read_bytes()))
        self._jwks = JwksCache(client, settings.jwks_cache_ttl_s, settings.fhir_timeout_s,
                               settings.jwks_max_stale_s, settings.jwks_refetch_interval_s)
        self._replay = replay
        self._leeway = settings.jwt_leeway_s
        self._max_lifetime = settings.jwt_max_lifetime_s

    async def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """Claims of a valid token for `audience`; otherwise a 401 ServiceError that says why."""
        if not authorization:
            raise unauthorized("missing Authorization: Bearer <JWT> header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Authorization header must be 'Bearer <JWT>'")
        try:
            unverified_token = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = unverified_token["header"], unverified_token["payload"]
        except jwt.PyJWTError:
            raise unauthorized("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            shown = repr(alg) if isinstance(alg, str) and alg.isascii() and alg.isprintable() and len(alg) <= 16 else ""
            raise unauthorized(f"JWT alg {shown or '(not shown)'} is refused: only asymmetric algorithms "
                               "(e.g. ES384, RS384)")
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise unauthorized("JWT issuer (iss) is not a trusted CDS client")
        key = await self._key(issuer, header)
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=audience, issuer=issuer.iss, leeway=self._leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("JWT has expired (exp)") from None
        except jwt.InvalidAudienceError:
            raise unauthorized(f"JWT audience (aud) is not this endpoint: expected {audience}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"JWT lacks the required claim {exc.claim!r}") from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise unauthorized("JWT issued-at (iat) is in the future or invalid") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("JWT signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"JWT is invalid ({type(exc).__name__})") from None
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise unauthorized("JWT jti must be a non-empty string")
        if exp - iat > self._max_lifetime:
            raise unauthorized(f"JWT lifetime (exp - iat) exceeds {self._max_lifetime} s")
        if not await self._replay.first_use(issuer.iss, jti, int(exp)):
            raise unauthorized("JWT was already used (jti replay)")
        return claims

    async def _key(self, issuer: TrustedIssuer, header: dict[str, Any]) -> jwt.PyJWK:
        """The verification key: configured keys first, else the JWKS at an allowlisted URL."""
        jku = header.get("jku")
        if jku is not None and jku not in issuer.jku:
            raise unauthorized("JWT jku is not an allowed key location for this issuer")
        kid, alg = header.get("kid"), header["alg"]
        static = self._static.get(issuer.iss)
        key = _find(static, kid, alg) if static is not None else None
        url = jku or (issuer.jku[0] if issuer.jku else None)
        if key is None and url is not None:
            key = _find(await self._jwks.get(url), kid, alg)
            if key is None:  # the issuer may have rotated its keys: refetch (rate-limited)
                key = _find(await self._jwks.get(url, refresh=True), kid, alg)
        if key is None:
            raise unauthorized("no key of the issuer matches the JWT kid/alg")
        return key


def _find(keys: jwt.PyJWKSet, kid: Any, alg: str) -> jwt.PyJWK | None:
    candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
    if kid is None and len(candidates) != 1:
        return None
    for key in candidates:
        key_alg = key._jwk_data.get("alg")
        if key_alg is None or key_alg == alg:
            return key
    return None
