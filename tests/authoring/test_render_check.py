"""Cards are rendered before a pack is accepted, and a card that still fails at request time costs only itself.

- `rules lint` (and so hot reload) renders every rule's card against the rule cases and synthetic facts, and
  reports a template that fails only with data at its file:line:column;
- a pack without its cases (or without the inputs they point to) is a warning, never a crash or a refusal;
- in the service, one failing card of two: 200 with the other card, the failure logged and in /health.
"""

# ruff: noqa: F811  (pack_dir is a pytest fixture imported from pack_helpers, then taken as a parameter)

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from jinja2 import UndefinedError
from pack_helpers import REPO, edit, pack_dir, position  # noqa: F401 - pack_dir is a fixture
from starlette.testclient import TestClient

from ccsvi_cds.authoring.cli import rules
from ccsvi_cds.authoring.lint import lint_pack
from ccsvi_cds.authoring.reload import PackReloader
from ccsvi_cds.rulepack.templates import template_env
from ccsvi_cds.service.app import create_app
from ccsvi_cds.service.settings import ServiceSettings
from ccsvi_cds.service.state import RuleState

BREAKS_WITHOUT_A_STUDY = "{{ order.study_title | length }}"
REPEAT_FIRST_LINE = "This order ("


def _break_repeat_rule(pack: Path) -> Path:
    """repeat-venous-procedure: a title length that fails whenever the order has no study (None | length)."""
    rule = pack / "repeat-venous-procedure.yaml"
    edit(rule, REPEAT_FIRST_LINE, f"This order ({BREAKS_WITHOUT_A_STUDY}; ")
    return rule


def test_a_template_that_fails_only_with_data_is_an_error_at_its_position(pack_dir: Path) -> None:
    rule = _break_repeat_rule(pack_dir)
    errors = lint_pack(pack_dir).errors
    assert len(errors) == 1, [str(p) for p in errors]
    (problem,) = errors
    assert (problem.file, problem.line, problem.column) == (str(rule), *position(rule, BREAKS_WITHOUT_A_STUDY))
    assert "rule 'repeat-venous-procedure' fails to render" in problem.message
    assert "TypeError: object of type 'NoneType' has no len()" in problem.message
    assert "with case '" in problem.message  # a rule case fires it: the case is named, with its position
    assert problem.hint
    cli = CliRunner().invoke(rules, ["lint", str(pack_dir)])
    assert cli.exit_code == 1 and f"{rule}:{problem.line}:{problem.column}: error:" in cli.output


def test_synthetic_facts_reach_what_no_case_does(pack_dir: Path) -> None:
    """No case has a study title on a ccsvi-trial card that breaks; every-field-present synthetic facts do."""
    rule = pack_dir / "ccsvi-trial.yaml"
    bad = "{{ order.study_title + 1 }}"
    edit(rule, "{% if order.study_title %} (\"{{ order.study_title }}\")",
         "{% if order.study_title %} (\"" + bad + "\")")
    shutil.rmtree(pack_dir / "cases")
    (problem,) = lint_pack(pack_dir).errors
    assert (problem.line, problem.column) == position(rule, bad)
    assert "every field present" in problem.message and "TypeError" in problem.message


def test_checks_are_strict_about_undefined_names_requests_are_not() -> None:
    """Why two environments: an undefined name fails the check loudly, and renders as nothing in a request."""
    source = "Prior: {{ prior.performed }}."
    assert template_env({}).from_string(source).render(order={}) == "Prior: ."
    with pytest.raises(UndefinedError):
        template_env({}, strict=True).from_string(source).render(order={})


def test_bundled_pack_renders_clean() -> None:
    assert lint_pack(REPO / "rules").problems == []


# --- a pack without its cases (issue 10, item 12) -------------------------------------------------------


def test_a_pack_without_its_cases_folder_lints_with_a_warning_and_reloads(pack_dir: Path) -> None:
    shutil.rmtree(pack_dir / "cases")
    result = lint_pack(pack_dir)
    assert result.ok, [str(p) for p in result.errors]
    assert any(p.message.startswith("no test cases") and p.file == str(pack_dir / "cases") for p in result.warnings)
    cli = CliRunner().invoke(rules, ["lint", str(pack_dir)])
    assert cli.exit_code == 0 and _no_traceback(cli) and "warning: no test cases" in cli.output
    _assert_reload_takes_an_edit(pack_dir)


def test_a_pack_whose_case_inputs_are_missing_lints_without_a_traceback_and_reloads(pack_dir: Path) -> None:
    """The pack deployed alone: cases/ is there, the ../../fhir_examples files it points to are not."""
    shutil.rmtree(pack_dir.parent / "fhir_examples")
    result = lint_pack(pack_dir)  # for the author these are errors (a typo'd path must not pass unseen) ...
    assert result.errors and all("input file not found" in p.message for p in result.errors)
    cli = CliRunner().invoke(rules, ["lint", str(pack_dir)])
    assert cli.exit_code == 1 and _no_traceback(cli)
    tested = CliRunner().invoke(rules, ["test", str(pack_dir)])
    assert tested.exit_code == 1 and _no_traceback(tested) and "error: input file not found" in tested.output
    _assert_reload_takes_an_edit(pack_dir)  # ... but the service runs no case: reload is not blocked


def test_a_pack_with_missing_case_inputs_still_gets_its_cards_rendered(pack_dir: Path) -> None:
    shutil.rmtree(pack_dir.parent / "fhir_examples")
    rule = _break_repeat_rule(pack_dir)
    rendering = [p for p in lint_pack(pack_dir).errors if "fails to render" in p.message]
    assert [(p.file, p.line, p.column) for p in rendering] == [(str(rule), *position(rule, BREAKS_WITHOUT_A_STUDY))]

    async def scenario() -> None:
        state = RuleState()
        state.load(pack_dir)
        outcome = await PackReloader(pack_dir, state).reload_once()
        assert outcome.status == "refused" and len(outcome.errors) == 1 and "fails to render" in outcome.errors[0]

    asyncio.run(scenario())


def test_a_case_input_the_facts_layer_cannot_read_fails_its_case_without_a_traceback(pack_dir: Path) -> None:
    (pack_dir.parent / "fhir_examples" / "positive-trial-extension.json").write_text('{"context": {}, "prefetch": 5}')
    cli = CliRunner().invoke(rules, ["lint", str(pack_dir)])
    assert _no_traceback(cli), cli.output
    tested = CliRunner().invoke(rules, ["test", str(pack_dir)])
    assert _no_traceback(tested) and tested.exit_code == 1  # the records core reads it as holding no order
    assert "FAIL" in tested.output and "ccsvi-trial.yaml" in tested.output


def _no_traceback(result: Result) -> bool:
    return result.exception is None or isinstance(result.exception, SystemExit)


def _assert_reload_takes_an_edit(pack: Path) -> None:
    async def scenario() -> None:
        state = RuleState()
        state.load(pack)
        edit(pack / "pack.yaml", "version: 1.0.0", "version: 1.0.1")
        outcome = await PackReloader(pack, state).reload_once()
        assert outcome.status == "loaded", outcome
        assert state.current.pack.version == "1.0.1"

    asyncio.run(scenario())


# --- at request time: one card of two fails -------------------------------------------------------------


def _hook_request(bundle_file: Path) -> dict[str, Any]:
    """The repeat-procedure example as an order-sign call: its ServiceRequest drafted, the rest prefetched."""
    entries = [e["resource"] for e in json.loads(bundle_file.read_text())["entry"]]

    def bundle(kind: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in entries if r["resourceType"] == kind]}

    patient = next(r for r in entries if r["resourceType"] == "Patient")
    return {"hook": "order-sign", "hookInstance": "d3b0c1e2-5f4a-4e6b-9c7d-8a9b0c1d2e3f",
            "context": {"userId": "Practitioner/pr-1", "patientId": patient["id"],
                        "draftOrders": bundle("ServiceRequest")},
            "prefetch": {"patient": patient, "conditions": bundle("Condition"), "procedures": bundle("Procedure"),
                         "researchSubjects": bundle("ResearchSubject")}}


def test_one_card_failing_at_request_time_leaves_the_other(pack_dir: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    request = _hook_request(pack_dir.parent / "fhir_examples" / "positive-repeat-procedure.json")
    settings = ServiceSettings(rules_dir=pack_dir, db_path=tmp_path / "service.sqlite3")
    with TestClient(create_app(settings)) as client:
        before = client.post("/cds-services/ccsvi-order-sign", json=request)
        assert before.status_code == 200
        assert sorted(c["source"]["topic"]["code"] for c in before.json()["cards"]) == [
            "repeat-venous-procedure", "venous-angioplasty-ms"]

        _break_repeat_rule(pack_dir)  # the running worker is given the broken pack (as if lint were skipped)
        client.app.state.runtime.rules.load(pack_dir)  # type: ignore[attr-defined]
        with caplog.at_level(logging.ERROR, logger="ccsvi_cds.service"):
            after = client.post("/cds-services/ccsvi-order-sign", json=request)
        assert after.status_code == 200, after.text
        assert [c["source"]["topic"]["code"] for c in after.json()["cards"]] == ["venous-angioplasty-ms"]
        failures = [r for r in caplog.records if r.getMessage().startswith("card failed to render")]
        assert len(failures) == 1 and failures[0].rule == "repeat-venous-procedure"  # type: ignore[attr-defined]
        assert "detail template line 1: TypeError" in failures[0].error  # type: ignore[attr-defined]

        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["cardRenderErrors"]["count"] == 1
        assert health["cardRenderErrors"]["last"]["rule"] == "repeat-venous-procedure"
