"""report.html opened in a real headless Chromium: it renders offline, draws the chart, and its counts match."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import mri, patient, write_ndjson

from ccsvi_cds.audit.run import AuditOptions, run_audit

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is required: bash .ci/install-system-deps"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_report(browser: Any, out: Path) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    return page, requests


def num(page: Any, selector: str) -> int:
    return int(page.inner_text(selector).strip())


def test_report_renders_chart_and_matches_summary(browser: Any, tmp_path: Path, rules_dir: Path,
                                                  small_export: Path) -> None:
    out = tmp_path / "out"
    run_audit(AuditOptions([str(small_export)], out, rules_dir, workers=2))
    summary = orjson.loads((out / "summary.json").read_bytes())
    findings = [orjson.loads(x) for x in (out / "findings.ndjson").read_bytes().splitlines()]
    assert findings, "the generated export must yield findings"
    page, requests = open_report(browser, out)

    assert requests == [(out / "report.html").as_uri()]  # self-contained: nothing else fetched
    assert num(page, "#total-resources") == summary["read"]["total"]
    assert num(page, "#total-evaluated") == summary["serviceRequestsEvaluated"]
    assert num(page, "#total-findings") == summary["findings"]["total"] == len(findings)
    assert num(page, "#total-errors") == summary["errors"]["total"]
    assert num(page, "#total-finding-patients") == summary["findings"]["patients"]
    per_rule = {r: num(page, f'#per-rule tr[data-rule="{r}"] .count') for r in summary["findings"]["byRule"]}
    assert per_rule == summary["findings"]["byRule"]
    rule_bars = {b.get_attribute("data-rule"): int(b.get_attribute("data-value"))
                 for b in page.query_selector_all("#chart-rules rect.bar")}
    assert rule_bars == summary["findings"]["byRule"]
    from collections import Counter

    statuses = Counter(f.get("status") or "unknown" for f in findings)
    assert {s: num(page, f'#per-status tr[data-status="{s}"] td.n') for s in statuses} == dict(statuses)
    for t, n in summary["read"]["byType"].items():
        assert num(page, f'#inputs-read tr[data-type="{t}"] td.n') == n

    # The chart is drawn: one bar per month from first to last finding, the bars sum to the dated findings,
    # and the tallest bar has a real on-screen height.
    bars = page.query_selector_all("#chart-time rect.bar")
    months = {f["authoredOn"][:7] for f in findings if f.get("authoredOn")}
    assert len(bars) >= len(months) > 0
    assert sum(int(b.get_attribute("data-value")) for b in bars) == sum(1 for f in findings if f.get("authoredOn"))
    heights = [b.bounding_box()["height"] for b in bars]
    assert max(heights) > 50
    assert page.locator("#chart-time").bounding_box()["width"] > 400

    # Table of findings with the evidence behind each one.
    rows = page.query_selector_all("#findings-table tr.finding")
    assert len(rows) == len(findings)
    first = rows[0]
    first.query_selector("details summary").click()
    text = first.inner_text()
    assert findings[0]["serviceRequest"] in text and findings[0]["evidence"][0] in text
    assert page.locator("#per-requester tbody tr").count() >= 1
    page.close()


def test_report_with_no_finding(browser: Any, tmp_path: Path, rules_dir: Path) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), mri("sr1", "Patient/p1")])
    out = tmp_path / "out"
    run_audit(AuditOptions([str(path)], out, rules_dir, workers=1))
    page, _ = open_report(browser, out)
    assert num(page, "#total-findings") == 0
    assert num(page, "#total-evaluated") == 1
    assert "No finding" in page.inner_text("#findings")
    assert page.query_selector("#chart-time") is None
    page.close()
