"""The service's public base URL for card links, as configured for `serve`, read by `check`, `audit` and docs.

A card's patient-page link must be the address the clinician can open. `serve` knows it from `base_url`;
the offline commands take the same setting (option, else `CCSVI_BASE_URL`, else `base_url` in the
`CCSVI_CONFIG_FILE` TOML), and say once on stderr when there is none, since the fallback is a loopback address.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import click

from ccsvi_cds.evaluate import DEFAULT_BASE_URL

ENV_BASE_URL = "CCSVI_BASE_URL"
ENV_CONFIG_FILE = "CCSVI_CONFIG_FILE"


def configured_base_url(option: str | None) -> str | None:
    """`option`, else the environment, else the config file; None when nothing is configured."""
    for value in (option, os.environ.get(ENV_BASE_URL)):
        if value and value.strip():
            return value.strip().rstrip("/")
    config = os.environ.get(ENV_CONFIG_FILE)
    if not config:
        return None
    try:
        data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"{ENV_CONFIG_FILE}={config}: cannot read: {exc}") from exc
    value = data.get("base_url")
    return value.strip().rstrip("/") if isinstance(value, str) and value.strip() else None


def base_url_or_warn(option: str | None, command: str) -> str:
    """The configured base URL; with none, one notice on stderr and the loopback default."""
    url = configured_base_url(option)
    if url is None:
        click.echo(f"ccsvi-cds {command}: no public base URL configured (--base-url or {ENV_BASE_URL}): "
                   f"card links point to {DEFAULT_BASE_URL}, which a clinician cannot open", err=True)
        return DEFAULT_BASE_URL
    return url
