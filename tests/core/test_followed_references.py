"""`unresolved` lists the references the projection follows that the input does not hold, whatever element
they are in; resources with none of those elements are passed over without being read."""

from __future__ import annotations

from builders import condition, order, research_subject

from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.facts.extract import unresolved


def test_every_followed_element_is_listed_and_others_are_not(pack):
    evaluator = Evaluator(pack)
    linked = order(sid="a", study="ResearchStudy/by-extension")
    odd = order(sid="b", reasonReference=[{"reference": "ResearchStudy/by-reason"}])
    r5 = {**order(sid="c"), "reason": [{"reference": {"reference": "ResearchStudy/by-r5-reason"}}]}  # R5
    plain = order(sid="d")
    subject = research_subject(study_ref="ResearchStudy/by-subject")
    records = evaluator.read([condition(), linked, odd, r5, plain, subject])
    assert [ref.key for ref in unresolved(records, {"ResearchStudy"})] == [
        "ResearchStudy/by-extension", "ResearchStudy/by-r5-reason", "ResearchStudy/by-reason",
        "ResearchStudy/by-subject"]
    assert unresolved(evaluator.read([condition(), plain]), {"ResearchStudy", "Condition"}) == []
