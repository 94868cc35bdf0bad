"""The repeat-venous-procedure card belongs to the new order: it names it, offers to cancel it, and cites."""

from __future__ import annotations

import json
import re
from typing import Any

from builders import ROOT

from ccsvi_cds.evaluate import Evaluator

EXAMPLE = ROOT / "fhir_examples" / "positive-repeat-procedure.json"


def _card(evaluator: Evaluator, rule: str) -> dict[str, Any]:
    result = evaluator.evaluate([json.loads(EXAMPLE.read_text())])
    return next(c for c in result.cards if c["source"]["topic"]["code"] == rule)


def test_names_its_order_and_offers_to_cancel_it(evaluator: Evaluator) -> None:
    card = _card(evaluator, "repeat-venous-procedure")
    assert "This order (ServiceRequest/sr-1006" in card["detail"]
    labels = [s["label"] for s in card["suggestions"]]
    assert labels == ["Cancel this order", "Cancel this order and refer to the MS clinic / neurology"]
    cancel, refer = card["suggestions"]
    assert cancel["isRecommended"] is True
    assert cancel["actions"] == [{"type": "delete", "description": "Cancel the repeat venous procedure order",
                                  "resourceId": "ServiceRequest/sr-1006"}]
    assert [a["type"] for a in refer["actions"]] == ["delete", "create"]
    assert refer["actions"][0]["resourceId"] == "ServiceRequest/sr-1006"


def test_every_bullet_cites_and_claims_nothing_the_evidence_lacks(evaluator: Evaluator) -> None:
    card = _card(evaluator, "repeat-venous-procedure")
    bullets = card["detail"].split("\n- ")[1:]
    labels = [c.label for c in evaluator.pack.evidence.values()]
    assert len(bullets) == 4
    assert all(any(re.search(rf"\(\[?{re.escape(label)}", b) for label in labels) for b in bullets), bullets
    text = (card["summary"] + card["detail"]).lower()
    for overclaim in ("the rule", "multipl", "each repeat adds"):
        assert overclaim not in text
    assert "about half" in text


def test_premise_differences_are_a_trend_not_a_finding(evaluator: Evaluator) -> None:
    example = ROOT / "fhir_examples" / "positive-angioplasty-jugular-rrms.json"
    card = evaluator.evaluate([json.loads(example.read_text())]).cards[0]
    assert "not statistically significant" in card["detail"]
    assert "p=0.062" in card["detail"] and "p=0.389" in card["detail"]
