"""The Spark engine (a real local[2] session) gives exactly the embedded engine's lines on the same input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import jugular_angioplasty, linked_to, mri, ms, patient, write_bundle, write_ndjson

from ccsvi_cds.audit import sources
from ccsvi_cds.audit.run import AuditOptions, run_audit

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

SAME = ("findings.ndjson", "findings.csv", "errors.ndjson")
SAME_SUMMARY = ("read", "patientsJoined", "serviceRequestsEvaluated", "findings", "errors", "inputs", "rulePack")


def both(rules_dir: Path, tmp: Path, inputs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    emb = run_audit(AuditOptions(inputs, tmp / "embedded", rules_dir, engine="embedded", workers=2))
    spk = run_audit(AuditOptions(inputs, tmp / "spark", rules_dir, engine="spark"))
    return emb, spk


def test_spark_matches_embedded_on_generated_export(spark: Any, tmp_path: Path, rules_dir: Path,
                                                     small_export: Path) -> None:
    emb, spk = both(rules_dir, tmp_path, [str(small_export)])
    assert spk["engine"] == "spark" and emb["engine"] == "embedded"
    for name in SAME:
        assert (tmp_path / "spark" / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes(), name
    for key in SAME_SUMMARY:
        assert spk[key] == emb[key], key
    assert emb["findings"]["total"] > 0 and emb["read"]["total"] >= 6000


def test_spark_matches_embedded_with_errors_and_bundles(spark: Any, tmp_path: Path, rules_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with plain NDJSON cut into many read tasks: the embedded engine numbers lines from each task's
    count afterwards, the Spark driver from a scan beforehand; both must give the same line numbers."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 2000)
    many: list[Any] = [mri(f"m{i}", f"Patient/q{i % 40}") for i in range(300)]
    for at in (3, 120, 260):
        many[at] = b'{"resourceType": "Condition", '
    many += [patient("p3"), ms("c3", "Patient/p3"), jugular_angioplasty("sr3", "Patient/p3")]
    c = write_ndjson(tmp_path / "in" / "c.ndjson", many)
    a = write_ndjson(tmp_path / "in" / "a.ndjson", [
        patient("p1"), b"{not json", ms("c1", "Patient/p1"),
        jugular_angioplasty("sr1", "Patient/p1", **linked_to("nowhere")),
        {"resourceType": "ServiceRequest", "id": "orphan", "status": "active"},
    ])
    b = write_bundle(tmp_path / "in" / "b.json", [patient("p2"), ms("c2", "Patient/p2"),
                                                    jugular_angioplasty("sr2", "Patient/p2", status="completed")])
    emb, spk = both(rules_dir, tmp_path, [str(a), str(b), str(c)])
    for name in SAME:
        assert (tmp_path / "spark" / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes(), name
    assert emb["findings"]["total"] == 3 and emb["errors"]["total"] == 6
    lines = [orjson.loads(x) for x in (tmp_path / "embedded" / "errors.ndjson").read_bytes().splitlines()]
    assert [e["line"] for e in lines if e["file"] == str(c)] == [4, 121, 261]
    found = [orjson.loads(x) for x in (tmp_path / "embedded" / "findings.ndjson").read_bytes().splitlines()]
    assert [f["source"]["line"] for f in found if f["source"]["file"] == str(c)] == [303]
    assert spk["errors"] == emb["errors"]


def test_spark_read_tasks_are_a_few_per_core() -> None:
    """Each Spark task costs a scheduling round and a Python worker hand-over: a few per core, within bounds."""
    from ccsvi_cds.audit.spark import MAX_TASK_BYTES, task_bytes

    def files(*sizes: int) -> list[sources.InputFile]:
        return [sources.InputFile(f"f{i}.ndjson", "ndjson", False, s) for i, s in enumerate(sizes)]

    assert task_bytes(files(1 << 20), 2) == sources.CHUNK_BYTES  # small inputs: the embedded engine's size
    assert task_bytes(files(150 << 20, 150 << 20), 2) == 50 << 20  # 300 MiB on 2 cores: 6 tasks
    assert task_bytes(files(100 << 30), 8) == MAX_TASK_BYTES  # a lost task stays cheap to redo
