"""`ccsvi-cds check` as a user runs it: a real subprocess on the bundled examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import ROOT

EXAMPLES = ROOT / "fhir_examples"
EXPECTED = {
    "positive-angioplasty-jugular-rrms.json": ["venous-angioplasty-ms"],
    "positive-stent-azygos-spms.json": ["venous-stent-ms"],
    "positive-trial-extension.json": ["ccsvi-trial"],
    "positive-trial-researchsubject.json": ["ccsvi-trial"],
    "positive-withdrawn-study.json": ["venous-angioplasty-ms"],
    "positive-repeat-procedure.json": ["venous-angioplasty-ms", "repeat-venous-procedure"],
    "positive-ccsvi-free-text.json": ["venous-angioplasty-ms"],
    "cds-hooks-order-sign.json": ["venous-stent-ms"],
    "cds-hooks-order-select-stent.json": ["venous-stent-ms"],
    "cds-hooks-order-select-unrelated.json": [],
    "negative-carotid-angioplasty.json": [],
    "negative-dialysis-fistula.json": [],
    "negative-iliac-vein-stent.json": [],
    "negative-unrelated-order.json": [],
    "negative-ms-refuted.json": [],
    "negative-ms-entered-in-error.json": [],
    "negative-cis-without-ms.json": [],
    "positive-pta-azygos-text.json": ["venous-angioplasty-ms"],
    "positive-jugular-open-icd-spellings.json": ["venous-angioplasty-ms"],
    "negative-transverse-sinus-iih.json": [],
    "negative-innominate-dialysis-access.json": [],
}


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccsvi_cds", "check", *args], check=False, cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=120)


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_gives_expected_cards(name):
    proc = check(str(EXAMPLES / name))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [c["source"]["topic"]["code"] for c in out["cards"]] == EXPECTED[name]
    assert out["issues"] == []


def test_text_format_summarises():
    proc = check("--format", "text", str(EXAMPLES / "positive-stent-azygos-spms.json"),
                 str(EXAMPLES / "negative-dialysis-fistula.json"))
    assert proc.returncode == 0
    assert "[CRITICAL] venous-stent-ms on ServiceRequest/sr-1002" in proc.stdout
    assert "negative-dialysis-fistula.json: 1 order(s) evaluated, 0 card(s)" in proc.stdout


def test_unreadable_input_fails_clearly_but_keeps_other_results(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Bundle",\n  "entry": [\n')
    proc = check("--format", "text", str(EXAMPLES / "positive-stent-azygos-spms.json"), str(bad),
                 str(tmp_path / "missing.json"))
    assert proc.returncode != 0
    assert "[CRITICAL] venous-stent-ms" in proc.stdout
    assert f"{bad}:3:1: not valid JSON" in proc.stderr
    assert "missing.json: cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_that_is_not_fhir_is_refused(tmp_path: Path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": "world"}')
    proc = check(str(other))
    assert proc.returncode != 0 and "neither a CDS Hooks request" in proc.stderr


def test_broken_rule_pack_is_reported(tmp_path: Path):
    proc = check("--rules", str(tmp_path), str(EXAMPLES / "positive-stent-azygos-spms.json"))
    assert proc.returncode != 0 and "pack.yaml is missing" in proc.stderr and "Traceback" not in proc.stderr
