"""`rules test`: cases run through Evaluator.evaluate; a failure shows expected vs actual cards; coverage."""

# ruff: noqa: F811  (pack_dir is a pytest fixture imported from pack_helpers, then taken as a parameter)

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from pack_helpers import REPO, edit, pack_dir, position  # noqa: F401 - pack_dir is a fixture

from ccsvi_cds.authoring.cases import format_report, load_cases, run_cases
from ccsvi_cds.authoring.cli import rules
from ccsvi_cds.rulepack import load_pack


def test_bundled_cases_pass_and_cover_every_rule() -> None:
    pack = load_pack(REPO / "rules")
    cases, problems = load_cases(REPO / "rules", pack)
    assert problems == []
    report = run_cases(pack, cases)
    assert report.failures == [], format_report(report)
    assert report.never_fired == [] and report.without_silent_case == []
    for rule in pack.rules:  # at least one firing and one silent case in the rule's own file
        own = [r for r in report.results if r.case.rule == rule.id]
        assert any(rule.id in r.fired for r in own), rule.id
        assert any(rule.id not in r.fired for r in own), rule.id
    result = CliRunner().invoke(rules, ["test", str(REPO / "rules")])
    assert result.exit_code == 0, result.output
    assert f"{len(cases)} passed, 0 failed" in result.output


def test_failing_case_shows_a_card_diff(pack_dir: Path) -> None:
    """An edit that makes the stent rule also fire for iliac veins: the near-miss case fails with a diff."""
    rule = pack_dir / "venous-stent-ms.yaml"
    edit(rule, "      any:\n        - {site: [outflow]}\n", "      any:\n        - {site: [outflow, other-vein]}\n")
    cases_file = pack_dir / "cases" / "venous-stent-ms.yaml"
    edit(cases_file, "detail_includes: [\"Progressive MS\", \"stent migrated to the heart\"]",
         "detail_includes: [\"Progressive MS\", \"stent migrated to the lung\"]")
    result = CliRunner().invoke(rules, ["test", str(pack_dir)])
    assert result.exit_code == 1
    line, col = position(cases_file, "- name: silent - iliac vein stent")
    iliac = (f"FAIL {cases_file}:{line}:{col + 2} [venous-stent-ms] silent - iliac vein stent for another venous disease\n"
             "     cards differ (- expected, + actual):\n"
             "       + critical  venous-stent-ms              ServiceRequest/sr-2003\n")
    assert iliac in result.output
    line, col = position(cases_file, "- name: azygos stent")
    detail = (f"FAIL {cases_file}:{line}:{col + 2} [venous-stent-ms] azygos stent, secondary progressive MS\n"
              "     detail of venous-stent-ms on ServiceRequest/sr-1002 does not contain 'stent migrated to the lung'\n")
    assert detail in result.output
    assert "37 passed, 4 failed, 41 case(s)" in result.output


def test_missing_and_unexpected_cards_side_by_side(pack_dir: Path) -> None:
    cases_file = pack_dir / "cases" / "repeat-venous-procedure.yaml"
    edit(cases_file, "        - {rule: venous-angioplasty-ms, indicator: warning, order: ServiceRequest/sr-1006}\n",
         "        - {rule: venous-stent-ms, indicator: critical, order: ServiceRequest/sr-1006}\n")
    pack = load_pack(pack_dir)
    cases, _ = load_cases(pack_dir, pack)
    report = run_cases(pack, [c for c in cases if c.case.name.startswith("repeat jugular")])
    (failure,) = report.failures
    assert failure.diff == [  # by order, then rule: matched cards keep their place between the changes
        "  warning   repeat-venous-procedure      ServiceRequest/sr-1006",
        "+ warning   venous-angioplasty-ms        ServiceRequest/sr-1006",
        "- critical  venous-stent-ms              ServiceRequest/sr-1006",
    ]


def test_never_fired_and_no_silent_case_reports(pack_dir: Path) -> None:
    """Remove every case that fires ccsvi-trial, and every silent case of venous-stent-ms."""
    for path in (pack_dir / "cases").glob("*.yaml"):
        path.unlink()
    (pack_dir / "cases" / "venous-stent-ms.yaml").write_text(
        "rule: venous-stent-ms\ncases:\n"
        "  - name: azygos stent\n    input: {file: ../../fhir_examples/positive-stent-azygos-spms.json}\n"
        "    expect: {cards: [{rule: venous-stent-ms, indicator: critical}]}\n")
    result = CliRunner().invoke(rules, ["test", str(pack_dir)])
    assert result.exit_code == 1
    out = result.output
    assert "1 passed, 0 failed, 1 case(s)" in out
    for rid in ("ccsvi-trial", "repeat-venous-procedure", "venous-angioplasty-ms"):
        assert f"never fired: {rid} (no case makes this rule fire: add a firing case to cases/{rid}.yaml)" in out
    assert "never fired: venous-stent-ms" not in out
    assert "no silent case: venous-stent-ms" in out


def test_expected_input_issues_are_checked(pack_dir: Path) -> None:
    (pack_dir / "cases" / "extra.yaml").write_text(
        "rule: venous-stent-ms\ncases:\n"
        "  - name: an order without an id is skipped and reported\n"
        "    input:\n      resources:\n        - {resourceType: ServiceRequest, status: draft, intent: order}\n"
        "    expect: {cards: []}\n")
    pack = load_pack(pack_dir)
    cases, problems = load_cases(pack_dir, pack)
    assert [p.severity for p in problems] == ["warning"]  # the file name differs from the rule id
    extra = [c for c in cases if c.file.endswith("extra.yaml")]
    (result,) = run_cases(pack, extra).results
    assert not result.passed
    assert result.notes[0].startswith("expected 0 input issue(s), got 1")


def test_case_format_errors_are_located(pack_dir: Path) -> None:
    cases_file = pack_dir / "cases" / "ccsvi-trial.yaml"
    edit(cases_file, "    input: {file: ../../fhir_examples/positive-trial-extension.json}\n",
         "    input: {file: ../../fhir_examples/positive-trial-extension.json, resources: []}\n")
    result = CliRunner().invoke(rules, ["test", str(pack_dir)])
    assert result.exit_code == 1
    line, col = position(cases_file, "input: {file: ../../fhir_examples/positive-trial-extension.json, resources")
    assert f"{cases_file}:{line}:{col}: error:" in result.output
    assert "give exactly one of file, request, resources (got file, resources)" in result.output
