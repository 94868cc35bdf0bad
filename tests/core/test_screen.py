"""The order screen (`Evaluator.screen`) the audit joins by: a relaxation of the rules, never stricter.

A patient none of whose orders is a candidate is never joined, so a screen that rejected an order some rule
matches would lose a finding. Checked exhaustively here against the rules' own patterns over every value the
fields can take; tests/differential checks every order of every scenario that gets a finding.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from builders import condition, order, patient

from ccsvi_cds.evaluate import Evaluator, OrderScreen
from ccsvi_cds.facts.requirements import own_fields
from ccsvi_cds.facts.schema import MATCHABLE, TRIAL_VALUES
from ccsvi_cds.rulepack import RulePack
from ccsvi_cds.rulepack.compiler import screen
from ccsvi_cds.rulepack.model import FactPattern


def _matches(pattern: FactPattern, fact: dict[str, str]) -> bool:
    """The rules' meaning, written independently of the compiler: every `where`, and one `any` if given."""
    def holds(where: dict[str, list[str]]) -> bool:
        return all(fact[f] in values for f, values in where.items())

    return holds(pattern.where) and (not pattern.any or any(holds(w) for w in pattern.any))


def _domains(pack: RulePack) -> dict[str, list[str]]:
    """Every value each order field can take that could matter: classifier values, and the literal values
    the rules name for free-text fields (status), plus one they never name."""
    named: dict[str, set[str]] = {}
    for rule in pack.rules:
        for alternative in rule.when:
            for pattern in alternative.values():
                for where in [pattern.where, *pattern.any]:
                    for f, values in where.items():
                        named.setdefault(f, set()).update(values)
    out: dict[str, list[str]] = {}
    for field, domain in MATCHABLE["order"].items():
        if isinstance(domain, str):
            spec = pack.manifest.classifiers[domain]
            out[field] = sorted({spec.default, *(v.value for v in spec.values)})
        elif isinstance(domain, tuple):
            out[field] = list(domain)
        else:
            out[field] = sorted(named.get(field, set()) | {"some-other-value"})
    assert out["trial"] == list(TRIAL_VALUES)
    return out


def test_screen_rejects_only_orders_no_rule_pattern_matches(pack: RulePack) -> None:
    alternatives = screen(pack.rules, "order", own_fields("order"))
    patterns = [p for r in pack.rules for alt in r.when for p in alt.values() if p.fact == "order"]
    domains = _domains(pack)
    own = sorted(own_fields("order"))
    other = sorted(set(domains) - set(own))
    verdicts: Counter[bool] = Counter()
    for own_values in itertools.product(*(domains[f] for f in own)):
        fact = dict(zip(own, own_values, strict=True))
        passes = any(all(fact[f] in allowed for f, allowed in alt) for alt in alternatives)
        some_match = any(_matches(p, {**fact, **dict(zip(other, rest, strict=True))})
                         for rest in itertools.product(*(domains[f] for f in other)) for p in patterns)
        assert passes == some_match, fact  # never stricter (no lost finding), never looser than needed
        verdicts[passes] += 1
    assert verdicts[True] and verdicts[False]  # it does reject some orders


def test_screen_judges_only_fields_an_order_holds_itself(pack: RulePack) -> None:
    fields = {f for alt in screen(pack.rules, "order", own_fields("order")) for f, _ in alt}
    assert fields and fields <= own_fields("order")
    assert "reason" not in own_fields("order") and "trial" not in own_fields("order")  # read from other records


@pytest.mark.parametrize(("changes", "verdict"), [
    ({}, OrderScreen.CANDIDATE),
    ({"status": "entered-in-error"}, OrderScreen.NOT_EVALUATED),
    ({"code": {"text": "MRI brain"}, "bodySite": None}, OrderScreen.NO_RULE),
    ({"code": {"text": "Carotid artery stent"}, "bodySite": None}, OrderScreen.NO_RULE),
    ({"code": "not a concept"}, OrderScreen.CANDIDATE),  # malformed: joined, so its error names the path
])
def test_screen_verdicts(evaluator: Evaluator, changes: dict[str, Any], verdict: OrderScreen) -> None:
    res = {k: v for k, v in {**order(), **changes}.items() if v is not None}
    assert evaluator.screen(res) is verdict
    if verdict is not OrderScreen.CANDIDATE:  # and the full evaluation agrees: no finding, MS or not
        assert not evaluator.evaluate([patient(), condition(), res]).findings
