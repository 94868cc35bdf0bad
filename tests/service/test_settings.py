"""Configuration: secure by default, config file + environment, readable start-up errors."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from service_harness import SERVE, free_port

from ccsvi_cds.service.fhir_client import ServerAllowlist
from ccsvi_cds.service.settings import ServiceSettings, is_loopback


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
    return subprocess.run([*SERVE, *args], env={**full, **(env or {})}, capture_output=True, text=True, timeout=30, check=False)


def test_refuses_a_non_loopback_address_without_authentication() -> None:
    done = run_serve("--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2
    assert "refusing to listen on '0.0.0.0' without authentication" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_says_at_start_up_that_it_serves_loopback_only(service_factory: Any) -> None:
    svc = service_factory()
    assert "no trusted JWT issuers configured, so serving on loopback only" in svc.log_text()


def test_bad_rule_pack_is_a_readable_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "pack.yaml").write_text("name: [unclosed\n")
    done = run_serve("--rules", str(tmp_path), "--port", str(free_port()))
    assert done.returncode == 2 and "pack.yaml" in done.stderr and "Traceback" not in done.stderr


def test_issuer_without_keys_is_a_readable_start_up_error() -> None:
    done = run_serve("--port", str(free_port()), env={"CCSVI_TRUSTED_ISSUERS": '[{"iss": "https://ehr"}]'})
    assert done.returncode == 2 and "needs jku URLs, jwks or jwks_file" in done.stderr


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    ServiceSettings(host="127.0.0.1").check_exposure()
    ServiceSettings(host="0.0.0.0", insecure_no_auth=True).check_exposure()
    issuers = [{"iss": "https://ehr", "jku": ["https://ehr/jwks"]}]
    ServiceSettings(host="0.0.0.0", trusted_issuers=issuers, base_url="https://cds.example.org").check_exposure()
    with pytest.raises(ValueError, match="set base_url"):
        ServiceSettings(host="0.0.0.0", trusted_issuers=issuers).check_exposure()
    with pytest.raises(ValueError, match="refusing"):
        ServiceSettings(host="0.0.0.0").check_exposure()
    assert not ServiceSettings(insecure_no_auth=True, trusted_issuers=[
        {"iss": "https://ehr", "jku": ["https://ehr/jwks"]}]).auth_enabled


def test_config_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ccsvi.toml"
    config.write_text('port = 9090\nallow_fhir_servers = ["https://ehr.example.org/fhir"]\nmax_body_bytes = 50000\n'
                      '[[trusted_issuers]]\niss = "https://ehr.example.org"\njku = ["https://ehr.example.org/jwks"]\n')
    for key in [k for k in __import__("os").environ if k.startswith("CCSVI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CCSVI_CONFIG_FILE", str(config))
    monkeypatch.setenv("CCSVI_MAX_BODY_BYTES", "70000")
    s = ServiceSettings()
    assert s.port == 9090 and s.max_body_bytes == 70000  # the environment wins over the file
    assert s.allow_fhir_servers == ["https://ehr.example.org/fhir"] and s.auth_enabled
    monkeypatch.setenv("CCSVI_ALLOW_FHIR_SERVERS", "https://a.example/fhir, https://b.example/r4")
    assert ServiceSettings().allow_fhir_servers == ["https://a.example/fhir", "https://b.example/r4"]
    monkeypatch.setenv("CCSVI_ALLOW_FHIR_SERVERS", '["https://c.example/fhir"]')
    assert ServiceSettings().allow_fhir_servers == ["https://c.example/fhir"]


def test_allowed_fhir_servers_must_be_plain_http_urls() -> None:
    for bad in ("ftp://x/fhir", "https://user:pw@x/fhir", "https://x/fhir?a=1", "x/fhir"):
        with pytest.raises(ValueError):
            ServiceSettings(allow_fhir_servers=[bad])


def test_allowlist_matches_origin_and_path_segments() -> None:
    allow = ServerAllowlist(["https://ehr.example.org/fhir"])
    assert allow.allows("https://ehr.example.org/fhir")
    assert allow.allows("https://EHR.example.org:443/fhir/")
    assert allow.allows("https://ehr.example.org/fhir/r4")
    for bad in ("https://ehr.example.org/fhir-evil", "http://ehr.example.org/fhir", "https://ehr.example.org:8443/fhir",
                "https://ehr.example.org.evil.com/fhir", "https://user@ehr.example.org/fhir", "https://ehr.example.org/",
                "file:///fhir", "https://[::1/fhir"):
        assert not allow.allows(bad), bad


def test_unwritable_database_is_a_readable_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_serve("--port", str(free_port()), "--db", str(blocker / "service.sqlite3"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "ccsvi-cds serve:" in done.stderr
