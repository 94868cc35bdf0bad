from __future__ import annotations

from typing import Any

import pytest
from builders import ROOT

from ccsvi_cds.evaluate import Evaluation, Evaluator
from ccsvi_cds.rulepack import RulePack, load_pack


@pytest.fixture(scope="session")
def pack() -> RulePack:
    return load_pack(ROOT / "rules")


@pytest.fixture(scope="session")
def evaluator(pack: RulePack) -> Evaluator:
    return Evaluator(pack)


@pytest.fixture
def fired(evaluator: Evaluator):
    """Evaluate resources and return [(rule id, indicator, order ref)]."""

    def run(*resources: dict[str, Any], targets: set[str] | None = None) -> list[tuple[str, str, str]]:
        result = evaluator.evaluate(list(resources), targets)
        assert not result.issues, result.issues
        return [(f.rule_id, f.indicator, f.order_ref) for f in result.findings]

    return run


@pytest.fixture
def evaluate(evaluator: Evaluator):
    def run(*resources: dict[str, Any], **kwargs: Any) -> Evaluation:
        return evaluator.evaluate(list(resources), **kwargs)

    return run
