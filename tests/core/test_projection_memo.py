"""What an order or procedure says by its own code, body site and status is read and classified once per
distinct value (`Projector._own_parts`): the rest of each resource is still read from the resource itself,
and a malformed one is reported where it is, every time."""

from __future__ import annotations

from builders import CPT, concept, condition, order, procedure

from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.facts.issues import IssueKind


def _orders(result: Evaluator, resources: list[dict]) -> dict[str, dict]:
    records = result.read(resources)
    (group,) = records.patients.values()
    facts = result._project.project(records, group, [])
    return {f["ref"]: f for f in facts.facts if f["kind"] in ("order", "procedure")}


def test_orders_sharing_their_code_keep_their_own_reason_text_and_status(pack):
    evaluator = Evaluator(pack)
    first = order(sid="a", reason=[concept(text="multiple sclerosis")])
    second = order(sid="b", reason=[concept(text="dialysis access stenosis")], authoredOn="2026-12-01")
    third = order(sid="c", status="active")
    facts = _orders(evaluator, [condition(), first, second, third, procedure(prid="p1"), procedure(prid="p2")])
    a, b, c = (facts[f"ServiceRequest/{x}"] for x in "abc")
    assert (a["procedure"], a["site"], a["vessel"]) == (b["procedure"], b["site"], b["vessel"]) == ("angioplasty",
                                                                                                "outflow", "vein")
    assert a["reason"] != b["reason"] and b["authored"] == "2026-12-01" and c["status"] == "active"
    assert facts["Procedure/p1"]["procedure"] == facts["Procedure/p2"]["procedure"]
    again = _orders(evaluator, [condition(), first, second, third])  # from the memo: the same facts
    assert again == {k: v for k, v in facts.items() if k.startswith("ServiceRequest/")}


def test_a_malformed_code_is_reported_at_its_own_path_each_time(pack):
    evaluator = Evaluator(pack)
    bad = order(CPT, sid="x", code={"coding": "not-a-list"})  # type: ignore[arg-type]
    for at in (1, 3):
        others = [condition(cid=f"c{i}") for i in range(at)]
        result = evaluator.evaluate([*others, bad])
        paths = [i.path for i in result.issues if i.kind is IssueKind.MALFORMED]
        assert paths and all(p.startswith(f"resources[{at}].code.coding") for p in paths), paths
        assert result.findings == []


def test_conditions_sharing_their_code_keep_their_own_verification(pack):
    evaluator = Evaluator(pack)
    refuted = condition(cid="c1", verification="refuted")
    confirmed = condition(cid="c2")
    for resources, ms in (([refuted, order()], "no"), ([refuted, confirmed, order()], "yes"), ([refuted, order()], "no")):
        records = evaluator.read(resources)
        (group,) = records.patients.values()
        patient = evaluator._project.project(records, group, []).facts[0]
        assert patient["ms"] == ms and patient["ms_conditions"] == ("Condition/c2" if ms == "yes" else None)


def test_a_malformed_condition_code_is_reported_only_where_it_counts(pack):
    evaluator = Evaluator(pack)
    for at in (0, 2):
        bad = condition(code={"coding": 1}, cid=f"bad{at}")  # type: ignore[arg-type]
        excluded = {**bad, "id": f"ex{at}", "verificationStatus": {"coding": [{"code": "entered-in-error"}]}}
        result = evaluator.evaluate([*[condition(cid=f"c{i}", code="38341003") for i in range(at)], excluded, bad,
                                     order()])
        paths = [i.path for i in result.issues if i.kind is IssueKind.MALFORMED]
        assert paths and all(p.startswith(f"resources[{at + 1}].code") for p in paths), paths


def test_the_memos_stay_small_whatever_clients_send(pack):
    """A client can send long codes and displays, and statuses of its own: none of that is kept."""
    from builders import procedure

    evaluator = Evaluator(pack)
    long_text = "Transluminal balloon angioplasty of the internal jugular vein " * 40
    for i in range(30):
        resources = [condition(), order(text=f"{long_text} {i}"), procedure(status=f"odd-status-{i}" * 5)]
        result = evaluator.evaluate(resources)
        assert [f.rule_id for f in result.findings] == ["venous-angioplasty-ms"]
    assert all(len(key) <= 1024 for key in evaluator._project._owned)
    assert len(evaluator._admissions) <= 3  # the patient, the order and the procedure: one combination each
