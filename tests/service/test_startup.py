"""A worker loads everything a request may need before it answers: the first order-sign must not wait
seconds for the clinical-text pipeline."""

from __future__ import annotations

from pathlib import Path

from ccsvi_cds.facts import mentions
from ccsvi_cds.service.state import RuleState

RULES = Path(__file__).resolve().parents[2] / "rules"


def test_loading_the_pack_builds_the_text_pipeline() -> None:
    mentions._PIPELINES.clear()
    RuleState().load(RULES)
    assert len(mentions._PIPELINES) == 1
