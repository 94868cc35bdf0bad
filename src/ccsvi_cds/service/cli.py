"""`ccsvi-cds serve`: run the CDS Hooks service on uvicorn.

Options override the environment / config file. They are handed to the worker processes through the
environment (`CCSVI_*`), so each worker builds the same settings and its own evaluator.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import click
import orjson

from .settings import CONFIG_FILE_ENV, ENV_PREFIX, ServiceSettings, is_loopback


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1; others need JWT issuers or --insecure-no-auth).")
@click.option("--port", type=int, help="Port (default 8080).")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), help="Rule pack directory.")
@click.option("--allow-fhir-server", "allow_fhir_servers", multiple=True,
              help="FHIR base URL prefix the service may read from; repeatable.")
@click.option("--workers", type=int, help="Worker processes (each has its own evaluator).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help=f"TOML config file (also {CONFIG_FILE_ENV}).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), help="SQLite file for decisions/feedback.")
@click.option("--base-url", help="Public URL of the service as the EHR sees it (JWT aud).")
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Turn JWT authentication off even on non-loopback addresses (never in production).")
@click.option("--reload-rules/--no-reload-rules", "reload_rules", default=None,
              help="Watch the rule pack and hot-reload valid edits (invalid ones are refused and logged).")
def serve(host: str | None, port: int | None, rules_dir: Path | None, allow_fhir_servers: tuple[str, ...],
          workers: int | None, config_file: Path | None, db_path: Path | None, base_url: str | None,
          insecure_no_auth: bool | None, reload_rules: bool | None) -> None:
    """Start the CDS Hooks 2.0 service (discovery, order-select, order-sign, feedback)."""
    import uvicorn

    from . import logs

    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = str(config_file.resolve())
    overrides = {"host": host, "port": port, "rules_dir": rules_dir and rules_dir.resolve(), "workers": workers,
                 "db_path": db_path and db_path.resolve(), "base_url": base_url,
                 "insecure_no_auth": insecure_no_auth, "reload_rules": reload_rules,
                 "allow_fhir_servers": list(allow_fhir_servers) or None}
    for key, value in overrides.items():
        if value is not None:
            os.environ[ENV_PREFIX + key.upper()] = (orjson.dumps(value).decode() if isinstance(value, (list, bool))
                                                    else str(value))
    try:
        settings = ServiceSettings()
        settings.check_exposure()
        from ccsvi_cds.rulepack import load_pack

        pack = load_pack(settings.rules_dir)  # fail here, readably, rather than in every worker
        from .feedback_store import Store

        Store(settings.db_path).close()  # the database must be creatable and writable
    except Exception as exc:  # noqa: BLE001 - configuration and pack errors are for the operator to read
        click.echo(f"ccsvi-cds serve: {exc}", err=True)
        sys.exit(2)
    logs.setup(settings.log_level)
    if settings.auth_enabled:
        auth = f"JWT required from {len(settings.trusted_issuers)} trusted issuer(s); aud = {settings.public_url}/..."
    elif settings.insecure_no_auth and not is_loopback(settings.host):
        auth = "AUTHENTICATION IS OFF (--insecure-no-auth) on a non-loopback address"
    else:
        auth = "authentication is off: no trusted JWT issuers configured, so serving on loopback only"
    fetch = ", ".join(settings.allow_fhir_servers) or "none (missing prefetch data gives 412)"
    logs.log.info("starting", extra={"url": settings.public_url, "pack": pack.name, "version": pack.version,
                                     "workers": settings.workers, "auth": auth, "fhir_servers": fetch})
    click.echo(f"ccsvi-cds: serving {pack.name} {pack.version} on http://{settings.host}:{settings.port} "
               f"({settings.workers} worker(s)); {auth}; FHIR servers: {fetch}", err=True)
    from .http_guard import GuardedHttpToolsProtocol

    # /metrics: every worker counts in files here and a scrape sums them (see metrics.py). A fresh private
    # folder per run (mode 0700): left-overs of another run would be summed in. Workers are spawned, so they
    # import prometheus_client after this is set.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir = tempfile.mkdtemp(prefix="ccsvi-cds-metrics-")
    try:
        uvicorn.run("ccsvi_cds.service.app:create_app_from_env", factory=True, host=settings.host,
                    port=settings.port, workers=settings.workers, access_log=False, log_config=None,
                    proxy_headers=False, http=GuardedHttpToolsProtocol,
                    timeout_keep_alive=settings.keepalive_timeout_s, lifespan="on")
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
