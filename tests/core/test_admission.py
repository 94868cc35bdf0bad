"""The admission filter only skips facts no rule could match: findings are identical with and without it."""

from __future__ import annotations

import json

import pytest
from builders import ROOT

from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.facts.records import request_items


@pytest.mark.parametrize("path", sorted((ROOT / "fhir_examples").glob("*.json")), ids=lambda p: p.name)
def test_filter_never_changes_findings(pack, path, monkeypatch):
    data = json.loads(path.read_text())
    resources = request_items(data) if "context" in data else [data]
    filtered = Evaluator(pack).evaluate(resources)
    unfiltered_evaluator = Evaluator(pack)
    monkeypatch.setattr(unfiltered_evaluator, "_admitted", lambda fact: True)
    unfiltered = unfiltered_evaluator.evaluate(resources)
    assert [f.card for f in filtered.findings] == [f.card for f in unfiltered.findings]


def test_unrelated_orders_never_reach_the_engine(pack, monkeypatch):
    evaluator = Evaluator(pack)
    seen: list[list[dict]] = []
    original = evaluator._engine.run
    monkeypatch.setattr(evaluator._engine, "run", lambda facts: seen.append(facts) or original(facts))
    request = json.loads((ROOT / "fhir_examples" / "cds-hooks-order-sign.json").read_text())
    result = evaluator.evaluate(request_items(request))
    assert result.orders_evaluated == 3 and len(result.findings) == 1
    assert [f["ref"] for f in seen[0] if f["kind"] == "order"] == ["ServiceRequest/sr-3001"]


def test_an_order_no_rule_pattern_admits_never_reaches_the_engine(pack, monkeypatch):
    """Admission is the disjunction of the rules' order patterns, not only the fields they all share: an
    angioplasty of a dialysis circuit has a procedure some rule names, at a site none of them accepts."""
    from builders import CPT, condition, order

    evaluator = Evaluator(pack)
    seen: list[list[dict]] = []
    original = evaluator._engine.run
    monkeypatch.setattr(evaluator._engine, "run", lambda facts: seen.append(facts) or original(facts))
    fistula = order(CPT, "36902", sid="fistula", body=None, text="Dialysis circuit angioplasty")
    result = evaluator.evaluate([condition(), order(sid="ijv"), fistula])
    assert result.orders_evaluated == 2 and [f.order_ref for f in result.findings] == ["ServiceRequest/ijv"]
    assert [f["ref"] for f in seen[0] if f["kind"] == "order"] == ["ServiceRequest/ijv"]
