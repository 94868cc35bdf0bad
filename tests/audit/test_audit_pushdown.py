"""The rule-derived pushdown: only patients with an order some rule could match are joined, and they are
joined whole (every record of theirs, in every file), so the findings are those of a full join."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from audit_data import jugular_angioplasty, mri, ms, patient, read_ndjson, write_ndjson

from ccsvi_cds.audit.run import AuditOptions, run_audit
from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.rulepack import load_pack

MS_TEXT = {"text": "Relapsing-remitting multiple sclerosis"}


def _audit(rules_dir: Path, out: Path, inputs: list[Path], engine: Literal["embedded", "spark"] = "embedded",
           ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    opts = AuditOptions([str(p) for p in inputs], out, rules_dir, workers=2, engine=engine)
    summary = run_audit(opts)
    return summary, read_ndjson(out / "findings.ndjson"), read_ndjson(out / "errors.ndjson")


def _export(tmp_path: Path) -> list[Path]:
    """p1: an angioplasty order (the candidate) and, in another file read later, a routine MRI order whose
    reason is the only MS evidence; p2: routine orders only, one with a reason Condition that is missing."""
    routine_with_ms = {**mri("mri-1", "Patient/p1"), "reasonCode": [MS_TEXT]}
    dangling = {**mri("mri-2", "Patient/p2"), "reasonReference": [{"reference": "Condition/missing"}]}
    return [
        write_ndjson(tmp_path / "a.ndjson", [patient("p1"), patient("p2"), jugular_angioplasty("sr-1", "Patient/p1")]),
        write_ndjson(tmp_path / "b.ndjson", [routine_with_ms, dangling, mri("mri-3", "Patient/p2")]),
    ]


def test_a_joined_patient_brings_every_record_of_theirs(tmp_path: Path, rules_dir: Path) -> None:
    inputs = _export(tmp_path)
    summary, findings, _ = _audit(rules_dir, tmp_path / "out", inputs)
    # the MS evidence is on a routine order the screen rejects: the finding needs the whole patient joined
    assert [(f["rule"], f["serviceRequest"]) for f in findings] == [("venous-angioplasty-ms", "ServiceRequest/sr-1")]
    assert findings[0]["matched"]["patient"]["ms"] == "yes"
    assert summary["patientsJoined"] == 1 and summary["serviceRequestsEvaluated"] == 4


def test_the_audit_agrees_with_the_core_on_the_same_records(tmp_path: Path, rules_dir: Path) -> None:
    inputs = _export(tmp_path)
    _, findings, _ = _audit(rules_dir, tmp_path / "out", inputs)
    records = [r for p in inputs for r in read_ndjson(p)]
    core = Evaluator(load_pack(rules_dir)).evaluate(records)
    assert [(f["rule"], f["serviceRequest"], f["patient"]) for f in findings] == \
        [(f.rule_id, f.order_ref, f.patient_ref) for f in core.findings]


def test_patients_without_a_candidate_order_are_not_joined(tmp_path: Path, rules_dir: Path) -> None:
    """Their records are read and counted (a malformed line is still reported), but not joined: a reason
    Condition missing from the export of a patient no rule could flag is not looked for."""
    inputs = _export(tmp_path)
    inputs.append(write_ndjson(tmp_path / "c.ndjson", [b'{"resourceType": "Condition", "id": "cut', ms("c9", "Patient/p2")]))
    summary, _, errors = _audit(rules_dir, tmp_path / "out", inputs)
    assert summary["patientsJoined"] == 1
    assert summary["read"]["byType"] == {"Condition": 1, "Patient": 2, "ServiceRequest": 4}
    assert [(e["file"], e["line"]) for e in errors] == [(str(inputs[2]), 1)]


def test_a_malformed_order_is_joined_so_its_error_names_the_element(tmp_path: Path, rules_dir: Path) -> None:
    broken = {**mri("mri-9", "Patient/p3"), "code": "MRI"}  # not a CodeableConcept: cannot be screened
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p3"), broken])
    summary, findings, errors = _audit(rules_dir, tmp_path / "out", [path])
    assert summary["patientsJoined"] == 1 and not findings
    assert [(e["line"], e["resource"]) for e in errors] == [(2, "ServiceRequest/mri-9.code")]


@pytest.mark.spark
def test_spark_joins_the_same_patients(tmp_path: Path, rules_dir: Path, spark: Any) -> None:
    inputs = _export(tmp_path)
    embedded = _audit(rules_dir, tmp_path / "embedded", inputs)
    on_spark = _audit(rules_dir, tmp_path / "spark", inputs, engine="spark")  # the fixture's session
    assert on_spark[1] == embedded[1] and on_spark[2] == embedded[2]
    assert on_spark[0]["patientsJoined"] == embedded[0]["patientsJoined"] == 1
    assert on_spark[0]["serviceRequestsEvaluated"] == embedded[0]["serviceRequestsEvaluated"]
