"""The durable_rules failure modes of shared/engine/durable-rules.md, each one provoked."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from ccsvi_cds.engine import EngineError, RuleEngine
from ccsvi_cds.engine import session as engine_session

RULES = {
    "pair#0": {"all": [{"o": {"$and": [{"kind": "order"}, {"site": "outflow"}]}},
                       {"p": {"$and": [{"kind": "patient"}, {"ms": "yes"}]}}]},
    "single#0": {"all": [{"o": {"$and": [{"kind": "order"}, {"procedure": "stent"}]}}]},
}
PATIENT = {"kind": "patient", "ref": "Patient/1", "ms": "yes"}


def order(ref: str, **fields: str) -> dict[str, str]:
    return {"kind": "order", "ref": ref, "site": "outflow", "procedure": "angioplasty", **fields}


@pytest.fixture
def engine() -> RuleEngine:
    return RuleEngine(RULES, name="test")


def test_join_fires_for_every_matching_order(engine):
    matches = engine.run([PATIENT, order("SR/1"), order("SR/2")])
    assert sorted((m.rule, m.facts["o"]["ref"]) for m in matches) == [("pair#0", "SR/1"), ("pair#0", "SR/2")]
    assert "sid" not in matches[0].facts["o"]


def test_fact_asserted_before_its_partner_still_joins(engine):
    assert [m.rule for m in engine.run([order("SR/1"), PATIENT])] == ["pair#0"]


def test_a_fact_that_matches_nothing_does_not_lose_other_matches(engine):
    """Point 3: with assert_facts one unmatched fact made the whole batch's actions vanish."""
    facts = [PATIENT, {"kind": "noise", "ref": "X/1"}, order("SR/1"), {"kind": "order", "ref": "SR/9", "site": "iliac"},
             order("SR/2", procedure="stent")]
    rules = sorted((m.rule, m.facts["o"]["ref"]) for m in engine.run(facts))
    assert rules == [("pair#0", "SR/1"), ("pair#0", "SR/2"), ("single#0", "SR/2")]


def test_session_where_nothing_fires_is_deleted_safely(engine):
    """Point 4: delete_state after a session in which no action ran could crash."""
    for _ in range(50):
        assert engine.run([{"kind": "order", "ref": "SR/1", "site": "iliac"}]) == []
        assert engine.run([]) == []
    assert engine.leaked_sessions == 0


def test_many_sessions_do_not_exhaust_the_session_table(engine):
    """Point 5: the 1,025th live session used to raise MemoryError."""
    for i in range(3000):
        assert len(engine.run([PATIENT, order(f"SR/{i}")])) == 1


def test_values_reach_the_core_and_come_back_unchanged(engine):
    """Facts are encoded for the C core here (not by durable.engine): text outside ASCII, quotes, backslashes
    and control characters must match as written and come back as asserted."""
    odd = 'Vena "jugularis" interna \\ sinistra \u00e9\u2028\t\x01 \U0001f600'
    rules = {"odd#0": {"all": [{"o": {"$and": [{"kind": "order"}, {"text": odd}]}}]}}
    fact = {"kind": "order", "ref": "SR/1", "text": odd, "count": 3, "flag": True}
    matches = RuleEngine(rules, name="odd").run([fact, {**fact, "ref": "SR/2", "text": odd + "x"}])
    assert [m.facts["o"] for m in matches] == [fact]


def test_sessions_are_independent(engine):
    assert len(engine.run([PATIENT])) == 0
    assert len(engine.run([order("SR/1")])) == 0  # the patient of the previous session is gone


def test_identical_facts_are_both_evaluated(engine):
    same = order("SR/1", procedure="stent")
    assert len(engine.run([same, dict(same)])) == 2


def test_oversized_fact_is_refused_before_the_c_core(engine):
    """Point 6: at most 255 properties per fact."""
    with pytest.raises(EngineError, match="properties"):
        engine.run([{f"f{i}": i for i in range(300)}])
    assert len(engine.run([PATIENT, order("SR/1")])) == 1  # still usable


def test_two_engines_for_two_pack_versions_coexist():
    """Point 7: reload registers a new ruleset instead of mutating one."""
    old = RuleEngine(RULES, name="pack")
    new = RuleEngine({"single#0": RULES["single#0"]}, name="pack")
    assert old.name != new.name
    facts = [PATIENT, order("SR/1", procedure="stent")]
    assert sorted(m.rule for m in old.run(facts)) == ["pair#0", "single#0"]
    assert [m.rule for m in new.run(facts)] == ["single#0"]


def test_an_error_inside_an_action_is_raised_not_swallowed(engine, monkeypatch):
    """Point 8: durable_rules swallows action exceptions."""

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine_session, "Match", broken)
    with pytest.raises(EngineError, match="boom"):
        engine.run([PATIENT, order("SR/1")])


def test_concurrent_threads_do_not_crash_or_mix_sessions(engine):
    """Point 1: two threads on one ruleset segfaulted; the engine serialises them."""
    errors: list[BaseException] = []
    counts: list[int] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                counts.append(len(engine.run([PATIENT, order(f"SR/{n}-{i}"), order(f"SR/{n}-{i}b")])))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and counts == [2] * 800


def _run_in_child(engine: RuleEngine, queue: multiprocessing.Queue) -> None:
    try:
        engine.run([PATIENT])
        queue.put("ran")
    except EngineError as exc:
        queue.put(f"refused: {exc}")


def test_engine_refuses_to_run_in_a_forked_process(engine):
    """Point 9: the handle is process-local; build one per worker instead."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(engine, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5).startswith("refused: this engine was built in another process")


def test_reserved_rule_name():
    with pytest.raises(EngineError):
        RuleEngine({"__end__": RULES["single#0"]})


def test_host_starts_no_background_threads():
    """Point 2: the default Host starts dispatch/timer threads."""
    before = threading.active_count()
    RuleEngine(RULES)
    assert threading.active_count() == before
