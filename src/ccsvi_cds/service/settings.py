"""Service configuration: defaults < config file (TOML) < environment (`CCSVI_*`) < command line.

The config file is named by `CCSVI_CONFIG_FILE` (or `serve --config`). Lists may be given in the
environment as JSON (`["a","b"]`) or comma separated (`a,b`). Worker processes re-read the same sources,
so `serve` passes its command-line options on through the environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "CCSVI_"
CONFIG_FILE_ENV = "CCSVI_CONFIG_FILE"


def default_rules_dir() -> Path:
    """The rule pack shipped inside the package (works from any directory, installed or not)."""
    from ccsvi_cds.bundled import bundled_rules_dir

    return bundled_rules_dir()


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import orjson

            return orjson.loads(text)
        return [v for v in (p.strip() for p in text.replace("\n", ",").split(",")) if v]
    return value


StrList = Annotated[list[str], NoDecode]


class TrustedIssuer(BaseModel):
    """An EHR allowed to call the service, and where its signing keys come from.

    `jku`: JWKS URLs this issuer may name in a token's `jku` header (exact match); the first one is also
    used when a token has no `jku`. `jwks` / `jwks_file`: keys configured in place (no fetch at all).
    """

    iss: str = Field(min_length=1)
    jku: list[str] = Field(default_factory=list)
    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None

    @model_validator(mode="after")
    def _has_keys(self) -> TrustedIssuer:
        if not (self.jku or self.jwks or self.jwks_file):
            raise ValueError(f"trusted issuer {self.iss!r} needs jku URLs, jwks or jwks_file")
        for url in self.jku:
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"jku {url!r} of issuer {self.iss!r} is not an http(s) URL")
        if self.jwks is not None:
            import jwt

            try:
                jwt.PyJWKSet.from_dict(self.jwks)
            except jwt.PyJWTError as exc:
                raise ValueError(f"jwks of issuer {self.iss!r} holds no usable key: {exc}") from None
        return self


class ServiceSettings(BaseSettings):
    """All settings of `ccsvi-cds serve`; see README "CDS Hooks service" for the table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    rules_dir: Path = Field(default_factory=default_rules_dir)
    base_url: str | None = None
    """Public URL of the service as the EHR sees it (JWT `aud` = base_url + path); default http://host:port."""

    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list)
    insecure_no_auth: bool = False
    """Explicitly turn JWT authentication off, also on non-loopback addresses (never in production)."""
    public_discovery: bool = False
    jwt_leeway_s: int = Field(default=30, ge=0, le=300)
    jwt_max_lifetime_s: int = Field(default=3600, ge=1)
    jwks_cache_ttl_s: int = Field(default=300, ge=0)
    """A fetched JWKS is fresh this long; after that it is refreshed in the background while still used."""
    jwks_max_stale_s: int = Field(default=86400, ge=0)
    """While the JWKS endpoint fails, the last good key set keeps verifying tokens up to this age."""
    jwks_refetch_interval_s: float = Field(default=2.0, ge=0, le=300)
    """At most one fetch per JWKS URL in this interval (an unknown `kid`, or after a failed fetch)."""

    allow_fhir_servers: StrList = Field(default_factory=list)
    fhir_timeout_s: float = Field(default=5.0, gt=0, le=60)
    fhir_max_pages: int = Field(default=10, ge=1, le=1000)
    fhir_max_entries: int = Field(default=5000, ge=1)
    refetch_null_prefetch: bool = False
    """CDS Hooks 2.0: a null prefetch value means "no data". True: fetch it anyway (for clients that misuse null)."""

    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_in_flight: int = Field(default=64, ge=1)
    """Per worker: a request arriving while this many are in progress or queued gets 503 + Retry-After."""
    max_header_bytes: int = Field(default=32768, ge=1024)
    """Request line and headers larger than this get 431 and the connection is closed."""
    max_headers: int = Field(default=100, ge=8)
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """A connection that has not sent a complete request head this long after it began is closed."""
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """A request body not complete this long after its head gets 408 and the connection is closed."""
    keepalive_timeout_s: int = Field(default=5, ge=1, le=600)
    """An idle keep-alive connection is closed after this many seconds."""
    cors_origins: StrList = Field(default_factory=lambda: ["*"])
    cors_headers: StrList = Field(default_factory=lambda: ["Authorization", "Content-Type", "X-Request-Id"])
    """Request headers a browser client may send (CORS preflight `Access-Control-Allow-Headers`)."""
    db_path: Path = Path("ccsvi-cds.sqlite3")
    fhir_validation: bool = False
    """Validate every FHIR resource with fhir.resources before evaluating (strict integration mode; ~0.3 ms
    per resource); off by default: the facts layer checks the fields the rules read."""
    legacy_delete_resource: bool = False
    """Also emit `resource: "Type/id"` in delete actions, as CDS Hooks 1.0 clients expect."""
    log_level: str = "info"
    reload_rules: bool = False
    """Watch rules_dir and hot-reload the pack: a changed pack is linted off to the side and swapped in only
    if valid; an invalid one is refused (lint errors logged) and the last good pack keeps serving."""

    @field_validator("allow_fhir_servers", "cors_origins", "cors_headers", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _issuers(cls, value: Any) -> Any:
        if isinstance(value, str):
            import orjson

            return orjson.loads(value) if value.strip() else []
        return value

    @field_validator("allow_fhir_servers")
    @classmethod
    def _fhir_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"allowed FHIR server {url!r} is not an http(s) URL")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError(f"allowed FHIR server {url!r} must not carry credentials, query or fragment")
            from .fhir_client import canonical_url

            if canonical_url(url) is None:
                raise ValueError(f"allowed FHIR server {url!r} has no normal form (encoded '/', '%' or bad escape)")
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.trusted_issuers) and not self.insecure_no_auth

    @property
    def public_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without authentication unless told explicitly."""
        if not self.trusted_issuers and not self.insecure_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host!r} without authentication: configure trusted JWT issuers "
                "(CCSVI_TRUSTED_ISSUERS) or pass --insecure-no-auth (CCSVI_INSECURE_NO_AUTH=true)"
            )
        if self.auth_enabled and not self.base_url and not is_loopback(self.host):
            raise ValueError(
                f"set base_url (--base-url / CCSVI_BASE_URL) to the URL the EHR calls: JWT aud is checked against "
                f"it, and {self.public_url} is not an address an EHR would use"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"{CONFIG_FILE_ENV}={config_file!r}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
