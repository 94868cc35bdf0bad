"""Reading from the EHR's FHIR server, only where the operator allows it.

The server named by a request (`fhirServer`) is used only if it falls under an allowed prefix (scheme,
host, port and a path prefix on a segment boundary); so are `next` page links, and the bearer token goes
nowhere else. Redirects are not followed; pages and response sizes are bounded. Any failure to obtain
data is a `DataUnavailable` (answered 412 by the service).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

MAX_RESPONSE_BYTES = 20_000_000
FHIR_ACCEPT = "application/fhir+json, application/json;q=0.9"


class DataUnavailable(Exception):
    """The data the rules need could not be had from the FHIR server; the message says why (no token)."""


def _norm(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


class ServerAllowlist:
    """URL prefixes the service may read from (`--allow-fhir-server`)."""

    def __init__(self, prefixes: list[str]) -> None:
        self._prefixes = [_norm(p) for p in prefixes]

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            if parts.username or parts.password or parts.scheme.lower() not in ("http", "https"):
                return False
            scheme, host, port, path = _norm(url)
        except ValueError:
            return False
        return any(
            scheme == s and host == h and port == p and (path == pp or path.startswith(pp + "/"))
            for s, h, p, pp in self._prefixes
        )


def under(base: str, url: str) -> bool:
    """True if `url` lies under the FHIR base `base` (same origin, path prefix on a segment boundary)."""
    try:
        s, h, p, path = _norm(url)
        bs, bh, bp, bpath = _norm(base)
    except ValueError:
        return False
    return (s, h, p) == (bs, bh, bp) and (path == bpath or path.startswith(bpath + "/"))


class FhirReader:
    """Async FHIR reads for one request: `base` is the request's fhirServer, already allowlisted."""

    def __init__(self, client: httpx.AsyncClient, base: str, token: str | None, timeout: float,
                 max_pages: int, max_entries: int) -> None:
        self._client = client
        self._base = base.rstrip("/")
        self._headers = {"Accept": FHIR_ACCEPT}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._max_pages = max_pages
        self._max_entries = max_entries

    @property
    def base(self) -> str:
        return self._base

    async def get(self, relative_or_absolute: str, what: str) -> dict[str, Any] | None:
        """GET one FHIR resource/Bundle; None on 404/410 (no such resource)."""
        url = relative_or_absolute
        if not url.startswith(("http://", "https://")):
            url = f"{self._base}/{url.lstrip('/')}"
        if not under(self._base, url):
            raise DataUnavailable(f"{what}: link leaves the FHIR server {self._base}; not followed")
        try:
            async with self._client.stream("GET", url, headers=self._headers, timeout=self._timeout) as resp:
                if resp.status_code in (404, 410):
                    return None
                if resp.status_code != 200:
                    raise DataUnavailable(f"{what}: FHIR server answered HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise DataUnavailable(f"{what}: FHIR server response exceeds {MAX_RESPONSE_BYTES} bytes")
        except httpx.TimeoutException:
            raise DataUnavailable(f"{what}: FHIR server did not answer within {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise DataUnavailable(f"{what}: FHIR server unreachable ({type(exc).__name__})") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise DataUnavailable(f"{what}: FHIR server answered with invalid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise DataUnavailable(f"{what}: FHIR server answered with something that is not a FHIR resource")
        if data["resourceType"] == "OperationOutcome":
            raise DataUnavailable(f"{what}: FHIR server answered with an OperationOutcome")
        return data

    async def search(self, query: str, what: str) -> dict[str, Any]:
        """Run a search and follow its `next` links (bounded); one searchset Bundle with all entries."""
        first = await self.get(query, what)
        if first is None or first.get("resourceType") != "Bundle":
            raise DataUnavailable(f"{what}: FHIR search did not return a Bundle")
        return await self.follow(first, what, pages_so_far=1)

    async def follow(self, bundle: dict[str, Any], what: str, pages_so_far: int = 1) -> dict[str, Any]:
        """Follow `next` links of `bundle` (already `pages_so_far` pages) and merge the entries."""
        entries = list(_entries(bundle))
        page, pages = bundle, pages_so_far
        while (link := next_link(page)) is not None:
            if pages >= self._max_pages:
                raise DataUnavailable(f"{what}: more than {self._max_pages} result pages; refusing to page on")
            nxt = await self.get(link, what)
            if nxt is None or nxt.get("resourceType") != "Bundle":
                raise DataUnavailable(f"{what}: a next page is missing or not a Bundle")
            entries.extend(_entries(nxt))
            if len(entries) > self._max_entries:
                raise DataUnavailable(f"{what}: more than {self._max_entries} entries")
            page, pages = nxt, pages + 1
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _entries(bundle: dict[str, Any]) -> list[Any]:
    entries = bundle.get("entry")
    return entries if isinstance(entries, list) else []
