"""The synthetic export generator: deterministic, realistic mix, and the audit finds exactly what it planted."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson

from bench.generate_export import generate
from ccsvi_cds.audit.run import AuditOptions, run_audit


def _lines(d: Path, pattern: str) -> list[dict]:
    out = []
    for p in sorted(d.glob(pattern)):
        data = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        out += [orjson.loads(x) for x in data.splitlines()]
    return out


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 3000, seed=3)
    b = generate(tmp_path / "b", 3000, seed=3)
    assert a["truth"] == b["truth"]
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name
    c = generate(tmp_path / "c", 3000, seed=4)
    assert c["truth"] != a["truth"]


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


def test_audit_finds_exactly_the_planted_orders(tmp_path: Path, rules_dir: Path, small_export: Path) -> None:
    run_audit(AuditOptions([str(small_export)], tmp_path / "out", rules_dir, workers=2))
    truth = orjson.loads((small_export / ".truth.json").read_bytes())
    fired: dict[str, set[str]] = {}
    for line in (tmp_path / "out" / "findings.ndjson").read_bytes().splitlines():
        f = orjson.loads(line)
        fired.setdefault(f["serviceRequest"].removeprefix("ServiceRequest/"), set()).add(f["rule"])
    missed = [s for s, rule in truth.items() if rule != "silent" and rule not in fired.get(s, set())]
    false_alarms = [s for s, rule in truth.items() if rule == "silent" and s in fired]
    assert missed == [] and false_alarms == []
    assert len(fired) == sum(1 for v in truth.values() if v != "silent") > 0
