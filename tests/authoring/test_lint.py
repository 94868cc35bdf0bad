"""`rules lint`: every error class, at its exact file:line:column, with a fix; the bundled pack is clean."""

# ruff: noqa: F811  (pack_dir is a pytest fixture imported from pack_helpers, then taken as a parameter)

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from pack_helpers import REPO, edit, pack_dir, position  # noqa: F401 - pack_dir is a fixture

from ccsvi_cds.authoring.cli import rules
from ccsvi_cds.authoring.lint import lint_pack
from ccsvi_cds.rulepack.source import Problem


def only(problems: list[Problem], fragment: str) -> Problem:
    hits = [p for p in problems if fragment in p.message]
    assert len(hits) == 1, f"{fragment!r}: {[str(p) for p in problems]}"
    return hits[0]


def at(problem: Problem, path: Path, line: int, column: int) -> None:
    assert (problem.file, problem.line, problem.column) == (str(path), line, column), str(problem)
    assert problem.hint, f"no fix given: {problem}"


def test_bundled_pack_lints_clean() -> None:
    result = lint_pack(REPO / "rules")
    assert result.ok and result.problems == [], [str(p) for p in result.problems]
    cli = CliRunner().invoke(rules, ["lint", str(REPO / "rules")])
    assert cli.exit_code == 0 and "clean" in cli.output


def test_schema_error_unknown_field(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    edit(rule, "indicator: info\n", "indicator: info\nseverity: high\n")
    p = only(lint_pack(pack_dir).errors, "unknown field 'severity'")
    at(p, rule, *position(rule, "severity:"))


def test_unknown_evidence_id_in_list_and_in_cite(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    edit(rule, "evidence: [cochrane-2019, fda-2012, zamboni-2009]", "evidence: [cochrane-2019, fda-2021, zamboni-2009]")
    edit(rule, "{{ cite('zamboni-2009') }}", "{{ cite('zambони-2009') }}")
    problems = lint_pack(pack_dir).errors
    at(only(problems, "unknown evidence id 'fda-2021'"), rule, *position(rule, "fda-2021"))
    at(only(problems, "unknown evidence id 'zambони-2009' in cite()"), rule, *position(rule, "zambони-2009"))


def test_unknown_value_set(pack_dir: Path) -> None:
    manifest = pack_dir / "pack.yaml"
    edit(manifest, "code: [arteries]", "code: [arterys]")
    p = only(lint_pack(pack_dir).errors, "unknown value set 'arterys'")
    at(p, manifest, *position(manifest, "arterys"))


def test_value_set_without_expansion(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "other-veins.json"
    text = vs.read_text()
    start = text.index('"contains": [')
    end = text.index("]", start)
    vs.write_text(text[:start] + '"contains": [' + text[end:])
    p = only(lint_pack(pack_dir).errors, "has no expansion")
    at(p, vs, *position(vs, '"expansion"'))


def test_code_with_unknown_system(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "arteries.json"
    edit(vs, '"system": "http://snomed.info/sct"', '"system": "http://snomed.info/snomed"')
    p = only(lint_pack(pack_dir).errors, "unknown system 'http://snomed.info/snomed'")
    at(p, vs, *position(vs, '"system"'))
    assert "http://snomed.info/sct" in p.hint


def test_summary_of_140_characters(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    long = "x" * 140
    edit(rule, 'summary: "Order linked to an approved CCSVI study: follow the trial protocol and confirm informed consent"',
         f'summary: "{long}"')
    p = only(lint_pack(pack_dir).errors, "summary is 140 characters")
    at(p, rule, *position(rule, "summary:"))


def test_indicator_outside_the_allowed_three(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    edit(rule, "indicator: info", "indicator: hard-stop")
    p = only(lint_pack(pack_dir).errors, "'hard-stop' is not allowed")
    at(p, rule, *position(rule, "indicator:"))
    assert "'info', 'warning' or 'critical'" in p.hint


def test_duplicate_rule_id(pack_dir: Path) -> None:
    copy = pack_dir / "z-trial-copy.yaml"  # read after ccsvi-trial.yaml: the second one is the duplicate
    copy.write_text((pack_dir / "ccsvi-trial.yaml").read_text())
    p = only(lint_pack(pack_dir).errors, "duplicate rule id 'ccsvi-trial'")
    at(p, copy, *position(copy, "id: ccsvi-trial"))


def test_template_field_that_does_not_exist(pack_dir: Path) -> None:
    rule = pack_dir / "repeat-venous-procedure.yaml"
    edit(rule, "{{ prior.performed }}", "{{ prior.performed_on }}")
    p = only(lint_pack(pack_dir).errors, "procedure facts have no field 'performed_on'")
    at(p, rule, *position(rule, "prior.performed_on"))


def test_template_name_that_is_not_bound(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    edit(rule, "with status \"{{ order.study_status }}\"", "with status \"{{ prior.status }}\"")
    p = only(lint_pack(pack_dir).errors, "unknown name 'prior'")
    at(p, rule, *position(rule, "prior.status"))


def test_alias_bound_in_only_some_alternatives(pack_dir: Path) -> None:
    """`patient` is always bound; an alias a when-alternative lacks makes that alternative's card fail."""
    rule = pack_dir / "repeat-venous-procedure.yaml"
    text = rule.read_text()
    second = text.index("  - order:", text.index("  - order:") + 1)
    prior = text.index("    prior:", second)
    rule.write_text(text[:prior] + text[text.index("card:", prior):])
    p = only(lint_pack(pack_dir).errors, "'prior' is not bound in when[1]")
    at(p, rule, *position(rule, "prior.ref"))


def test_suggestion_condition_field_checked(pack_dir: Path) -> None:
    rule = pack_dir / "venous-stent-ms.yaml"
    edit(rule, 'when: {patient: {ms: ["yes"]}}', 'when: {patient: {has_ms: ["yes"]}}')
    p = only(lint_pack(pack_dir).errors, "patient facts have no field 'has_ms'")
    at(p, rule, *position(rule, "has_ms"))


def test_rule_that_can_never_fire_contradictory_where_and_any(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    text = rule.read_text()
    text = text.replace("any:\n        - {site: [outflow]}\n        - {site: [unspecified], vessel: [vein]}",
                        "any:\n        - {site: [outflow], trial: [none]}", 1)
    text = text.replace("any:\n        - {site: [outflow, other-vein]}\n        - {site: [unspecified], vessel: [vein, unknown]}",
                        "any:\n        - {site: [outflow], trial: [not-approved]}", 1)
    rule.write_text(text)
    problems = lint_pack(pack_dir).errors
    contradictions = [p for p in problems if "this alternative can never match" in p.message]
    assert [(p.line, p.column) for p in contradictions] == [position(rule, "trial: [none]"),
                                                           position(rule, "trial: [not-approved]")]
    never = only(problems, "rule 'ccsvi-trial' can never fire")
    at(never, rule, *position(rule, "when:"))


def test_where_value_no_classifier_can_produce(pack_dir: Path) -> None:
    """A classifier value without codes or patterns exists in the domain but never comes out of it."""
    manifest = pack_dir / "pack.yaml"
    edit(manifest, "      - value: dialysis-circuit\n", "      - value: portal\n      - value: dialysis-circuit\n")
    rule = pack_dir / "venous-stent-ms.yaml"
    edit(rule, "where: {procedure: [stent], trial: [none, not-approved]}\n      any:\n        - {site: [outflow]}",
         "where: {procedure: [stent], trial: [none, not-approved], site: [portal]}\n      any:\n        - {site: [portal]}")
    problems = lint_pack(pack_dir).errors
    p = [x for x in problems if "can never give portal" in x.message]
    assert (p[0].line, p[0].column) == position(rule, "site: [portal]")


NEW_RULE = """id: stent-other-vein-in-trial
version: 1.0.0
title: Stent of another vein in a CCSVI trial
description: A rule no case exercises yet.
indicator: info
when:
  - order:
      fact: order
      where: {procedure: [stent], trial: [approved], site: [other-vein], reason: [ccsvi]}
card:
  summary: "Stent of another vein in a CCSVI study"
  detail: "Linked to {{ order.study }}."
  evidence: [fda-2012]
"""


def test_rule_no_case_fires_is_a_warning(pack_dir: Path) -> None:
    rule = pack_dir / "stent-other-vein-in-trial.yaml"
    rule.write_text(NEW_RULE)
    result = lint_pack(pack_dir)
    assert result.ok, [str(p) for p in result.errors]
    p = only(result.warnings, "no test case fires rule 'stent-other-vein-in-trial'")
    at(p, rule, *position(rule, "id: stent-other-vein-in-trial"))
    assert len(result.warnings) == 1


def test_unused_value_set_is_a_warning(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "renal-veins.json"
    vs.write_text('{"resourceType": "ValueSet", "id": "renal-veins", "status": "draft",\n'
                  ' "expansion": {"timestamp": "2026-11-21T00:00:00Z", "contains": [\n'
                  '  {"system": "http://snomed.info/sct", "code": "56400007", "display": "Renal vein"}]}}\n')
    result = lint_pack(pack_dir)
    assert result.ok  # a warning only
    at(only(result.warnings, "value set 'renal-veins' is referenced by no classifier"), vs, *position(vs, '"id"'))


def test_case_file_problems(pack_dir: Path) -> None:
    cases = pack_dir / "cases" / "ccsvi-trial.yaml"
    edit(cases, "{rule: ccsvi-trial, indicator: info, order: ServiceRequest/sr-1003}",
         "{rule: ccsvi-trail, indicator: info, order: ServiceRequest/sr-1003}")
    edit(cases, "positive-trial-researchsubject.json", "positive-trial-research-subject.json")
    edit(cases, "- {rule: venous-angioplasty-ms, indicator: warning, order: ServiceRequest/sr-1005}",
         "- {rule: venous-angioplasty-ms, indicator: critical, order: ServiceRequest/sr-1005}")
    problems = lint_pack(pack_dir).errors
    at(only(problems, "unknown rule id 'ccsvi-trail'"), cases, *position(cases, "rule: ccsvi-trail"))
    at(only(problems, "input file not found"), cases, *position(cases, "file: ../../fhir_examples/positive-trial-research"))
    at(only(problems, "has indicator 'warning', the case expects 'critical'"), cases, *position(cases, "indicator: critical"))


def test_cli_exit_code_and_format(pack_dir: Path) -> None:
    rule = pack_dir / "ccsvi-trial.yaml"
    edit(rule, "{{ order.study_status }}", "{{ order.study_state }}")
    result = CliRunner().invoke(rules, ["lint", str(pack_dir)])
    assert result.exit_code == 1
    line, col = position(rule, "order.study_state")
    assert f"{rule}:{line}:{col}: error: order facts have no field 'study_state'" in result.output
    assert "(fix: use one of: procedure, site" in result.output
    assert result.output.rstrip().endswith("1 error(s), 0 warning(s)")
    as_json = CliRunner().invoke(rules, ["lint", "--format", "json", str(pack_dir)])
    assert as_json.exit_code == 1 and f'"line": {line}' in as_json.output and f'"column": {col}' in as_json.output
