"""Reading from the EHR's FHIR server, only where the operator allows it.

The server named by a request (`fhirServer`) is used only if it falls under an allowed prefix (scheme,
host, port and a path prefix on a segment boundary, all compared in RFC 3986 normal form, which is also the
URL fetched); so are `next` page links, and the bearer token goes nowhere else. Redirects are not
followed; pages and response sizes are bounded. Any failure to obtain data is a `DataUnavailable`
(answered 412 by the service).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from .bounded import read_bounded

MAX_RESPONSE_BYTES = 20_000_000
FHIR_ACCEPT = "application/fhir+json, application/json;q=0.9"


class DataUnavailable(Exception):
    """The data the rules need could not be had from the FHIR server; the message says why (no token)."""


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str | None:
    """The RFC 3986 normal form of an absolute http(s) URL, or None for one that must not be fetched.

    Normalised: scheme and host case, default port, percent-encoded unreserved characters (`%2e` is `.`),
    dot segments (`/fhir/../x` is `/x`); the fragment is dropped. Refused (None): anything but visible ASCII
    (control characters, spaces, non-ASCII), userinfo, a backslash, and a path holding an encoded `/`, `\\`
    or `%` (servers disagree on whether they separate segments), a `;` (Java servers read `/..;/` as `/../`),
    a malformed escape, or a bad port.
    Checking and fetching the same normal form means the allowlist sees exactly the path that is requested.
    """
    if not url or any(not ("!" <= c <= "~") for c in url) or "\\" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = _decode_unreserved(parts.path)
    if path is None or ";" in path or "%3B" in path:
        return None
    path = remove_dot_segments(path) or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{path}{query}"


def _decode_unreserved(path: str) -> str | None:
    """Decode escapes of unreserved characters, upper-case the rest; None if an escape is malformed or
    encodes `/`, `\\` or `%` (RFC 3986 6.2.2.2)."""
    if path.count("%") != len(_PCT.findall(path)):
        return None

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char in "/\\%":
            raise ValueError(char)
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    try:
        return _PCT.sub(one, path)
    except ValueError:
        return None


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4."""
    out: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith(("./", "/./")):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../"):
            rest = rest[3:]
            if out:
                out.pop()
        elif rest == "/..":
            rest = "/"
            if out:
                out.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            start = 1 if rest.startswith("/") else 0
            cut = rest.find("/", start)
            cut = len(rest) if cut == -1 else cut
            out.append(rest[:cut])
            rest = rest[cut:]
    return "".join(out)


def _origin_path(canonical: str) -> tuple[str, str]:
    parts = urlsplit(canonical)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


def _within(base: str, url: str) -> bool:
    """Both canonical: `url` has `base`'s origin and lies under its path on a segment boundary."""
    origin, path = _origin_path(url)
    base_origin, base_path = _origin_path(base)
    return origin == base_origin and (path == base_path or path.startswith(base_path + "/"))


class ServerAllowlist:
    """URL prefixes the service may read from (`--allow-fhir-server`), compared in normal form."""

    def __init__(self, prefixes: list[str]) -> None:
        self._prefixes = [c for c in (canonical_url(p) for p in prefixes) if c is not None]

    def allows(self, url: str) -> bool:
        target = canonical_url(url)
        return target is not None and any(_within(p, target) for p in self._prefixes)


def under(base: str, url: str) -> bool:
    """True if `url` lies under the FHIR base `base` (same origin, path prefix on a segment boundary),
    both taken in normal form (`canonical_url`); a URL that has none is never under anything."""
    b, u = canonical_url(base), canonical_url(url)
    return b is not None and u is not None and _within(b, u)


def resolve(base: str, link: str) -> str | None:
    """The normal form of a link found in a page from `base`: absolute as it is, relative under `base`
    (a leading `/` is taken relative to the base too, as FHIR servers mean it); None if it has none."""
    if link.lower().startswith(("http://", "https://")):
        return canonical_url(link)
    if any(not ("!" <= c <= "~") for c in link):
        return None
    return canonical_url(f"{base.rstrip('/')}/{link.lstrip('/')}")


class FhirReader:
    """Async FHIR reads for one request: `base` is the request's fhirServer, already allowlisted."""

    def __init__(self, client: httpx.AsyncClient, base: str, token: str | None, timeout: float,
                 max_pages: int, max_entries: int) -> None:
        self._client = client
        self._base = (canonical_url(base) or base).rstrip("/")
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
        url = resolve(self._base, relative_or_absolute)
        if url is None or not under(self._base, url):
            raise DataUnavailable(f"{what}: link leaves the FHIR server {self._base}; not followed")
        try:
            async with self._client.stream("GET", url, headers=self._headers, timeout=self._timeout) as resp:
                if resp.status_code in (404, 410):
                    return None
                if resp.status_code != 200:
                    raise DataUnavailable(f"{what}: FHIR server answered HTTP {resp.status_code}")
                body = await read_bounded(resp.aiter_bytes(), None, MAX_RESPONSE_BYTES, lambda: DataUnavailable(
                    f"{what}: FHIR server response exceeds {MAX_RESPONSE_BYTES} bytes"))
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
