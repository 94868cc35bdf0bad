"""`rules docs` shows each rule's card as a clinician sees it, rendered from each of its firing test cases,
and puts internal values in words. The HTML catalogue is opened in headless Chromium and compared with the
cards the evaluation path returns for the same cases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pack_helpers import REPO

from ccsvi_cds.authoring.cases import load_cases
from ccsvi_cds.authoring.docs import cards_from_case
from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.rulepack import load_pack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
BASE = "https://cds.example.org"


def _docs(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}, "CCSVI_BASE_URL": BASE}
    return subprocess.run([sys.executable, "-m", "ccsvi_cds", "rules", "docs", str(REPO / "rules"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def _expected_cards() -> list[tuple[str, str, dict[str, Any]]]:
    """(rule, case name, card) for every card a rule's own case makes it show, via the evaluation path."""
    pack = load_pack(REPO / "rules")
    evaluator = Evaluator(pack, base_url=BASE)
    loaded, _ = load_cases(pack.root, pack)
    out = []
    for case in loaded:
        cards = cards_from_case(evaluator, case)
        assert isinstance(cards, list), cards
        out += [(case.rule, case.case.name, c) for c in cards if c["source"]["topic"]["code"] == case.rule]
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    out = tmp_path_factory.mktemp("docs") / "catalogue.html"
    proc = _docs(out)
    assert proc.returncode == 0, proc.stderr
    assert Path(CHROMIUM).exists(), "Debian chromium is required: bash .ci/install-system-deps"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page()
        pg.goto(out.as_uri())
        pg.wait_for_load_state("load")
        yield pg
        browser.close()


@pytest.mark.browser
def test_every_firing_case_shows_its_card_rendered(page: Any) -> None:
    expected = _expected_cards()
    assert len(expected) >= 8  # every rule fires in at least one case
    for rule, case, card in expected:
        quoted = case.replace("\\", "\\\\").replace('"', '\\"')  # a CSS string: case names may hold quotes
        box = page.locator(f'section#{rule} .card[data-case="{quoted}"]')
        assert box.count() == 1, (rule, case)
        assert box.locator(".summary strong").inner_text() == card["summary"]
        detail = box.locator(".detail")
        text = detail.inner_text()
        assert "**" not in text and "{%" not in text and "{{" not in text  # rendered markdown, not source
        assert detail.locator("strong, li").count() > 0  # markdown became HTML (bold, lists)
        for link in [a for a in card["detail"].split("](")[1:]]:
            href = link.split(")")[0]
            assert detail.locator(f'a[href="{href}"]').count() >= 1
        shown = [box.locator(".suggestion").nth(i).inner_text() for i in range(box.locator(".suggestion").count())]
        assert [s.removesuffix(" (recommended)") for s in shown] == [s["label"] for s in card.get("suggestions", [])]
        links = box.locator(".links a")
        assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
            link["url"] for link in card.get("links", [])]
    patient_links = page.locator('.card .links a[href$="/patient-info/ccsvi"]')
    assert patient_links.count() > 0
    assert all(patient_links.nth(i).get_attribute("href") == f"{BASE}/patient-info/ccsvi"
               for i in range(patient_links.count()))


@pytest.mark.browser
def test_the_card_template_source_is_not_shown(page: Any) -> None:
    body = page.locator("body").inner_text()
    assert "cite(" not in body and "{%" not in body and "{{" not in body


@pytest.mark.browser
def test_internal_values_are_explained_in_words(page: Any) -> None:
    body = page.locator("#venous-stent-ms ol").inner_text()
    assert "site is a cerebrospinal outflow vein (internal jugular, azygos, hemiazygos or vertebral vein) (outflow)" in body
    assert "site is not named (no vessel given in the order) (unspecified)" in body
    row = page.locator("table tr", has_text="outflow").filter(has_text="cerebrospinal-outflow-veins").first
    assert "a cerebrospinal outflow vein" in row.inner_text()


def test_markdown_catalogue_shows_rendered_cards(tmp_path: Path) -> None:
    out = tmp_path / "catalogue.md"
    assert _docs(out).returncode == 0
    text = out.read_text()
    for rule, case, card in _expected_cards():
        assert f"#### Test case: {case}" in text
        assert f"> **[{card['indicator']}] {card['summary']}**" in text
    assert f"]({BASE}/patient-info/ccsvi)" in text and "{base_url}" not in text
    assert "{%" not in text and "cite(" not in text
    assert "| `outflow` | a cerebrospinal outflow vein" in text
