"""Card links use the configured public base URL on every surface; `check` and `audit` say so once when none is.

Real subprocesses, as a user runs the commands; the environment is cleared of CCSVI_* first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "fhir_examples"
ORDER = str(EXAMPLES / "positive-stent-azygos-spms.json")
NOTICE = "no public base URL configured"


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}, **extra}


def _cli(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccsvi_cds", *args], cwd=cwd, env=env, capture_output=True, check=False,
                          text=True, timeout=300)


def _link_urls(cards: list[dict]) -> list[str]:
    return [link["url"] for card in cards for link in card.get("links", []) if "patient-info" in link["url"]]


def test_check_without_a_base_url_says_so_once_for_many_files() -> None:
    proc = _cli(["check", ORDER, str(EXAMPLES / "cds-hooks-order-sign.json"), str(EXAMPLES / "positive-ccsvi-free-text.json")],
                _env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(NOTICE) == 1
    assert "http://127.0.0.1:8080" in proc.stderr


def test_check_takes_the_base_url_from_option_environment_or_config_file(tmp_path: Path) -> None:
    config = tmp_path / "service.toml"
    config.write_text('port = 9000\nbase_url = "https://toml.example.org/cds/"\n')
    for args, env, expected in [
        (["--base-url", "https://opt.example.org"], _env(CCSVI_BASE_URL="https://env.example.org"),
         "https://opt.example.org/patient-info/ccsvi"),
        ([], _env(CCSVI_BASE_URL="https://env.example.org"), "https://env.example.org/patient-info/ccsvi"),
        ([], _env(CCSVI_CONFIG_FILE=str(config)), "https://toml.example.org/cds/patient-info/ccsvi"),
    ]:
        proc = _cli(["check", ORDER, *args], env)
        assert proc.returncode == 0, proc.stderr
        assert NOTICE not in proc.stderr
        assert _link_urls(json.loads(proc.stdout)["cards"]) == [expected]


def test_check_reports_an_unreadable_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("base_url = \n")
    proc = _cli(["check", ORDER], _env(CCSVI_CONFIG_FILE=str(bad)))
    assert proc.returncode != 0 and f"CCSVI_CONFIG_FILE={bad}: cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_audit_says_once_and_uses_the_configured_url(tmp_path: Path) -> None:
    quiet = _cli(["audit", ORDER, "--out", str(tmp_path / "a"), "--workers", "1"], _env())
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.count(NOTICE) == 1
    configured = _cli(["audit", ORDER, "--out", str(tmp_path / "b"), "--workers", "1"],
                      _env(CCSVI_BASE_URL="https://cds.example.org"))
    assert configured.returncode == 0 and NOTICE not in configured.stderr, configured.stderr
    finding = json.loads((tmp_path / "b" / "findings.ndjson").read_text().splitlines()[0])
    assert _link_urls([finding["card"]]) == ["https://cds.example.org/patient-info/ccsvi"]


def test_check_validate_says_what_it_validated() -> None:
    proc = _cli(["check", "--validate", "--base-url", "https://x.example.org", str(EXAMPLES / "cds-hooks-order-sign.json")],
                _env())
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "validated" in line)
    assert line.startswith(str(EXAMPLES / "cds-hooks-order-sign.json") + ": validated ")
    assert "with fhir.resources" in line and "ServiceRequest" in line and "Condition" in line
    assert line.endswith("all valid")


def test_check_validate_counts_an_invalid_resource(tmp_path: Path) -> None:
    bundle = json.loads((EXAMPLES / "positive-stent-azygos-spms.json").read_text())
    cond = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    cond["onsetDateTime"] = "not a date"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle))
    proc = _cli(["check", "--validate", "--base-url", "https://x.example.org", str(path)], _env())
    assert proc.returncode == 0, proc.stderr
    assert "1 invalid, skipped (see issues)" in proc.stderr
