"""The synthetic export generator: deterministic, realistic mix, and the audit finds exactly what it planted."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.generate_export import ROUTINE_ORDERS, generate
from ccsvi_cds.audit.run import AuditOptions, run_audit


def _lines(d: Path, pattern: str) -> list[dict]:
    out = []
    for p in sorted(d.glob(pattern)):
        data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        out += [orjson.loads(x) for x in data.splitlines()]
    return out


@pytest.mark.parametrize("shape", ["default", "referral"])
def test_generator_is_deterministic(tmp_path: Path, shape: str) -> None:
    a = generate(tmp_path / "a", 3000, seed=3, shape=shape)
    b = generate(tmp_path / "b", 3000, seed=3, shape=shape)
    assert a["truth"] == b["truth"]
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name
    c = generate(tmp_path / "c", 3000, seed=4, shape=shape)
    assert c["truth"] != a["truth"]


def test_unknown_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape 'ehr'"):
        generate(tmp_path / "x", 100, shape="ehr")


def test_generator_mix_is_realistic(tmp_path: Path) -> None:
    info = generate(tmp_path / "x", 60_000, seed=5, per_file=20_000)
    assert 60_000 <= info["resources"] < 60_100
    manifest = orjson.loads((tmp_path / "x" / "manifest.json").read_bytes())
    per_type = Counter(o["type"] for o in manifest["output"])
    assert per_type["Observation"] >= 2  # several files per type
    orders = _lines(tmp_path / "x", "ServiceRequest.*")
    truth = info["truth"]
    firing = [s for s, v in truth.items() if v != "silent"]
    assert 0 < len(firing) < 0.02 * len(orders)  # CCSVI orders are rare among referrals
    codes = {c.get("code") for o in orders for c in o["code"].get("coding", [])}
    assert {"36902", "37238", "418285008"} <= codes  # dialysis circuit, (iliac) stent, carotid look-alikes
    refs = {o["subject"]["reference"].split("Patient/")[0] for o in orders}
    assert {"", "https://ehr.example.org/fhir/"} <= refs  # reference spellings are mixed


def test_referral_shape_mix(tmp_path: Path) -> None:
    """Every patient has one or two routine orders, about a third have Conditions, nothing else is bulk."""
    info = generate(tmp_path / "r", 30_000, seed=5, shape="referral")
    manifest = orjson.loads((tmp_path / "r" / "manifest.json").read_bytes())
    count = Counter[str]()
    for o in manifest["output"]:
        count[o["type"]] += o["count"]
    assert "Observation" not in count and "Encounter" not in count
    assert 1.4 < count["ServiceRequest"] / count["Patient"] < 1.6  # 320k / 480k at 1M resources
    assert 0.5 < count["Condition"] / count["Patient"] < 0.7  # 192k / 320k at 1M resources
    assert 0 < count["Procedure"] < 0.002 * info["resources"]  # a few hundred at 1M resources
    orders = _lines(tmp_path / "r", "ServiceRequest.*")
    routine = Counter(o["subject"]["reference"].rsplit("Patient/")[1].split("/")[0] for o in orders
                      if o["code"].get("text") in ROUTINE_ORDERS and "coding" not in o["code"])
    patients = [p["id"] for p in _lines(tmp_path / "r", "Patient.*")]
    assert {routine[p] for p in patients} == {1, 2}
    with_conditions = {c["subject"]["reference"].rsplit("Patient/")[1].split("/")[0]
                       for c in _lines(tmp_path / "r", "Condition.*")}
    assert 0.28 < len(with_conditions) / len(patients) < 0.38
    codes = {c.get("code") for o in orders for c in o["code"].get("coding", [])}
    assert {"36902", "37238", "418285008"} <= codes  # the look-alikes are there
    firing = [s for s, v in info["truth"].items() if v != "silent"]
    assert 0 < len(firing) < 0.01 * len(orders)


def _assert_findings_equal_truth(export: Path, out: Path) -> None:
    truth = orjson.loads((export / ".truth.json").read_bytes())
    fired: dict[str, set[str]] = {}
    for line in (out / "findings.ndjson").read_bytes().splitlines():
        f = orjson.loads(line)
        fired.setdefault(f["serviceRequest"].removeprefix("ServiceRequest/"), set()).add(f["rule"])
    missed = [s for s, rule in truth.items() if rule != "silent" and rule not in fired.get(s, set())]
    false_alarms = [s for s, rule in truth.items() if rule == "silent" and s in fired]
    assert missed == [] and false_alarms == []
    assert len(fired) == sum(1 for v in truth.values() if v != "silent") > 0


def test_audit_finds_exactly_the_planted_orders(tmp_path: Path, rules_dir: Path, small_export: Path) -> None:
    run_audit(AuditOptions([str(small_export)], tmp_path / "out", rules_dir, workers=2))
    _assert_findings_equal_truth(small_export, tmp_path / "out")


def test_audit_finds_exactly_the_planted_orders_in_a_referral_export(tmp_path: Path, rules_dir: Path) -> None:
    export = tmp_path / "bulk"
    info = generate(export, 25_000, seed=11, gz=True, per_file=6000, shape="referral")
    expected = Counter(info["truth"].values())
    assert {"venous-angioplasty-ms", "venous-stent-ms", "ccsvi-trial"} <= set(expected)  # the seed covers them
    run_audit(AuditOptions([str(export)], tmp_path / "out", rules_dir, workers=2))
    _assert_findings_equal_truth(export, tmp_path / "out")
