"""CDS Hooks JWT verification (spec 2.0 "Trusting CDS Clients").

Only asymmetric algorithms are accepted (`none` and HMAC are refused before any key is looked at, which
also stops the "HS256 signed with the public key" confusion). The issuer must be configured; its keys
come from a configured JWKS or from a `jku` URL on that issuer's allowlist (never from a URL the token
alone chooses). `aud` must be the exact URL of the endpoint called; `exp`, `iat` and `jti` are required
and a `jti` is accepted once. Tokens are never logged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from .errors import Problem, ServiceError
from .replay import ReplayCache
from .settings import ServiceSettings, TrustedIssuer

ALLOWED_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
MAX_JWKS_BYTES = 256_000
REFRESH_INTERVAL_S = 30.0  # at most one forced JWKS refetch per URL in this interval (unknown kid)


def unauthorized(message: str) -> ServiceError:
    safe = message.replace('"', "'")
    return ServiceError(401, Problem(message, code="login"),
                        {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'})


class JwksCache:
    """JWKS documents by URL, cached for `ttl` seconds; fetched only for URLs the caller has allowed."""

    def __init__(self, client: httpx.AsyncClient, ttl: float, timeout: float) -> None:
        self._client = client
        self._ttl = ttl
        self._timeout = timeout
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._last_fetch: dict[str, float] = {}

    async def get(self, url: str, refresh: bool = False) -> jwt.PyJWKSet:
        now = time.monotonic()
        cached = self._sets.get(url)
        if cached and cached[0] > now and not refresh:
            return cached[1]
        if cached and refresh and now - self._last_fetch.get(url, 0.0) < REFRESH_INTERVAL_S:
            return cached[1]
        self._last_fetch[url] = now
        try:
            resp = await self._client.get(url, timeout=self._timeout, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise unauthorized(f"could not fetch the issuer's JWKS ({type(exc).__name__})") from None
        if resp.status_code != 200 or len(resp.content) > MAX_JWKS_BYTES:
            raise unauthorized(f"could not fetch the issuer's JWKS (HTTP {resp.status_code})")
        keys = _keyset(resp.content)
        self._sets[url] = (now + self._ttl, keys)
        return keys


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
        self._jwks = JwksCache(client, settings.jwks_cache_ttl_s, settings.fhir_timeout_s)
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
        if alg not in ALLOWED_ALGORITHMS:
            raise unauthorized(f"JWT alg {alg!r} is refused: only asymmetric algorithms (e.g. ES384, RS384)")
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
