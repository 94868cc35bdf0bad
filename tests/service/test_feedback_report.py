"""`ccsvi-cds feedback report`: a real SQLite file filled through the store's own API, the command run as a
subprocess, the page opened in headless Chromium, and every count compared with SQL on the same file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ccsvi_cds.service.feedback_store import CardRecord, DecisionRecord, Store
from ccsvi_cds.service.models import FeedbackItem

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
PACKS = [{"name": "ccsvi", "version": "1.0.0", "digest": "a" * 64}, {"name": "ccsvi", "version": "1.1.0", "digest": "b" * 64}]
RULES = ["venous-stent-ms", "venous-angioplasty-ms", "repeat-venous-procedure"]
MONTHS = ["2026-09-15T10:00:00+00:00", "2026-10-03T10:00:00+00:00", "2026-11-20T10:00:00+00:00"]
REASON = "urn:ccsvi-cds:override-reason"


def _decision(i: int, cards: list[CardRecord]) -> DecisionRecord:
    return DecisionRecord(hook_instance=str(uuid.UUID(int=i)), service_id="ccsvi-order-sign", hook="order-sign",
                          patient_id=f"p{i}", user_id="Practitioner/1", encounter_id=None, order_refs=[],
                          input_digest="0" * 64, pack=PACKS[i % 2], issue_paths=[], cards=cards)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 decisions, 1-2 cards each, spread over three months and two pack versions; feedback on most."""
    path = tmp_path_factory.mktemp("fb") / "service.sqlite3"
    store = Store(path)
    feedback: list[FeedbackItem] = []
    decisions = []
    for i in range(60):
        cards = []
        for j in range(1 + i % 2):
            card = str(uuid.UUID(int=10_000 + i * 10 + j))
            sugg = str(uuid.UUID(int=90_000 + i * 10 + j))
            cards.append(CardRecord(card, RULES[(i + j) % 3], "critical", f"ServiceRequest/sr-{i}", [sugg], "d" * 64))
            kind = (i + j) % 5
            ts = datetime(2026, 11, 21, 10, i % 60, tzinfo=UTC)
            if kind in (0, 1):
                feedback.append(FeedbackItem(card=card, outcome="accepted", outcomeTimestamp=ts,
                                             acceptedSuggestions=[{"id": sugg}]))
            elif kind == 2:
                feedback.append(FeedbackItem(card=card, outcome="overridden", outcomeTimestamp=ts, overrideReason={
                    "reason": {"system": REASON, "code": "approved-trial", "display": "Approved trial"}}))
            elif kind == 3:
                feedback.append(FeedbackItem(card=card, outcome="overridden", outcomeTimestamp=ts,
                                             overrideReason={"reason": {"system": REASON, "code": "patient-informed"},
                                                             "userComment": "discussed"}))
                if i % 4 == 0:  # overridden, then accepted later: the latest outcome counts
                    feedback.append(FeedbackItem(card=card, outcome="accepted", acceptedSuggestions=[{"id": sugg}],
                                                 outcomeTimestamp=ts.replace(hour=11)))
            # kind 4: no feedback
        decisions.append(_decision(i, cards))
    store.record_decisions(decisions)
    store.record_feedback("ccsvi-order-sign", feedback)
    store.record_feedback("ccsvi-order-sign", [FeedbackItem(card=str(uuid.UUID(int=1)), outcome="accepted")])
    store.close()
    with sqlite3.connect(path) as db:  # the store stamps "now": spread the decisions over three months
        db.execute("UPDATE decision SET created_at = CASE id % 3 WHEN 0 THEN ? WHEN 1 THEN ? ELSE ? END", MONTHS)
    return path


@pytest.fixture(scope="module")
def report(database: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = database.parent / "report.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
    proc = subprocess.run([sys.executable, "-m", "ccsvi_cds", "feedback", "report", "--db", str(database),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=120, check=False)
    return out, proc


def _expected(database: Path) -> dict[str, Any]:
    """The counts, straight from SQL: each card's latest feedback (outcome time, else received; then id)."""
    with sqlite3.connect(database) as db:
        rows = db.execute("""
            WITH ranked AS (
              SELECT card_uuid, outcome, override_code, accepted_suggestions, ROW_NUMBER() OVER (
                PARTITION BY card_uuid ORDER BY coalesce(outcome_timestamp, received_at) DESC, id DESC) AS rn
              FROM feedback)
            SELECT c.rule_id, substr(d.created_at, 1, 7), d.pack_version, coalesce(r.outcome, 'none'),
                   r.override_code, coalesce(json_array_length(r.accepted_suggestions), 0)
            FROM decision_card c JOIN decision d ON d.id = c.decision_id
            LEFT JOIN ranked r ON r.card_uuid = c.card_uuid AND r.rn = 1""").fetchall()
        unmatched = db.execute("SELECT count(DISTINCT card_uuid) FROM feedback WHERE card_uuid NOT IN "
                               "(SELECT card_uuid FROM decision_card)").fetchone()[0]
    return {"rows": rows, "unmatched": unmatched}


@pytest.fixture(scope="module")
def page(report: tuple[Path, subprocess.CompletedProcess[str]]) -> Iterator[tuple[Any, list[str]]]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is required: bash .ci/install-system-deps"
    out, proc = report
    assert proc.returncode == 0, proc.stderr
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(out.as_uri())
        pg.wait_for_load_state("load")
        yield pg, requests
        browser.close()


def _num(pg: Any, selector: str) -> int:
    return int(pg.inner_text(selector).split()[0])


@pytest.mark.browser
def test_totals_and_per_rule_counts_match_the_database(page: tuple[Any, list[str]], database: Path) -> None:
    pg, requests = page
    exp = _expected(database)
    rows = exp["rows"]
    assert requests == [pg.url]  # the page itself and nothing else: no network, no script
    assert pg.evaluate("document.scripts.length") == 0
    assert _num(pg, "#total-shown") == len(rows) == 90
    for outcome in ("accepted", "overridden", "none"):
        assert _num(pg, f"#total-{outcome}") == sum(1 for r in rows if r[3] == outcome)
    assert _num(pg, "#total-suggestions") == sum(r[5] for r in rows)
    assert _num(pg, "#unmatched") == exp["unmatched"] == 1
    for rule in RULES:
        mine = [r for r in rows if r[0] == rule]
        tr = f'#rules-table tr[data-rule="{rule}"]'
        assert _num(pg, f"{tr} td.shown") == len(mine)
        for outcome in ("accepted", "overridden", "none"):
            assert _num(pg, f"{tr} td.{outcome}") == sum(1 for r in mine if r[3] == outcome)
        for code in ("approved-trial", "patient-informed"):
            n = sum(1 for r in mine if r[3] == "overridden" and r[4] == code)
            label = "Approved trial" if code == "approved-trial" else code
            cell = pg.locator(f'{tr} .reason[data-reason="{label}"] .n')
            assert (int(cell.inner_text()) if cell.count() else 0) == n


@pytest.mark.browser
def test_per_month_and_per_pack_counts_match_the_database(page: tuple[Any, list[str]], database: Path) -> None:
    pg, _ = page
    rows = _expected(database)["rows"]
    for rule in RULES:
        for month in sorted({r[1] for r in rows}):
            mine = [r for r in rows if r[0] == rule and r[1] == month]
            tr = f'table.rule-months[data-rule="{rule}"] tr[data-month="{month}"]'
            if not mine:  # a month without this rule's cards has no row
                assert pg.locator(tr).count() == 0
                continue
            assert _num(pg, f"{tr} td.shown") == len(mine)
            for outcome in ("accepted", "overridden", "none"):
                assert _num(pg, f"{tr} td.{outcome}") == sum(1 for r in mine if r[3] == outcome)
    packs = pg.locator("#packs-table tbody tr")
    assert packs.count() == 2
    for version in ("1.0.0", "1.1.0"):
        tr = f'#packs-table tr[data-pack^="ccsvi {version} "]'
        assert _num(pg, f"{tr} td.shown") == sum(1 for r in rows if r[2] == version)


@pytest.mark.browser
def test_charts_are_drawn_with_a_bar_per_month_and_rule(page: tuple[Any, list[str]]) -> None:
    pg, _ = page
    months = pg.locator("#chart-months text")
    assert [months.nth(i).text_content() for i in range(months.count())] == ["2026-09", "2026-10", "2026-11"]
    assert pg.locator("#chart-months rect.overridden").count() == 3
    box = pg.locator("#chart-rules").bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 50
    assert pg.locator("#chart-rules rect.accepted").count() == 3


def test_a_missing_or_foreign_database_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    for path, message in [(tmp_path / "none.sqlite3", "no such file"),
                          (other, "not a ccsvi-cds decision database")]:
        proc = subprocess.run([sys.executable, "-m", "ccsvi_cds", "feedback", "report", "--db", str(path),
                               "--out", str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "r.html").exists()
