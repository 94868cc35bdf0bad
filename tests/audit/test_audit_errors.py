"""Bad records are reported (file, line, reason) and skipped; bad inputs stop before work; outputs are atomic."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import jugular_angioplasty, linked_to, mri, ms, patient, read_ndjson, write_ndjson
from click.testing import CliRunner

from ccsvi_cds.audit import outputs as outputs_mod
from ccsvi_cds.audit import run as run_mod
from ccsvi_cds.audit.cli import audit as audit_cmd
from ccsvi_cds.audit.outputs import OUTPUT_NAMES, sha256_file
from ccsvi_cds.audit.run import AuditOptions, run_audit


def audit(rules_dir: Path, out: Path, *inputs: Path, workers: int = 2) -> tuple[dict[str, Any], list, list]:
    summary = run_audit(AuditOptions([str(i) for i in inputs], out, rules_dir, workers=workers))
    return summary, read_ndjson(out / "findings.ndjson"), read_ndjson(out / "errors.ndjson")


def test_bad_records_are_reported_and_skipped(tmp_path: Path, rules_dir: Path) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [
        patient("p1"),
        b'{"resourceType": "Condition", "id": "broken", ',  # line 2: truncated JSON
        ms("c1", "Patient/p1"),
        b"[1, 2, 3]",  # line 4: not a resource
        {"resourceType": "ServiceRequest", "status": "active", "subject": {"reference": "Patient/p1"}},  # 5: no id
        {"resourceType": "ServiceRequest", "id": "orphan", "status": "active"},  # 6: no subject
        jugular_angioplasty("sr1", "Patient/p1"),  # 7: still found
        {"resourceType": "Condition", "id": "c-bad", "subject": {"reference": "Patient/p1"}, "code": 42},  # 8
        {"resourceType": "Condition", "id": "c-tab", "subject": {"reference": "Patient/p\t1"}},  # 9: bad id chars
    ])
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert [f["serviceRequest"] for f in findings] == ["ServiceRequest/sr1"]
    assert findings[0]["source"]["line"] == 7
    by_line = {e["line"]: e for e in errors}
    assert set(by_line) == {2, 4, 5, 6, 8, 9}
    assert all(e["file"] == str(path) for e in errors)
    assert by_line[2]["reason"].startswith("malformed JSON")
    assert "not a FHIR resource" in by_line[4]["reason"]
    assert "without a valid id" in by_line[5]["reason"]
    assert "no subject" in by_line[6]["reason"]
    assert by_line[8]["reason"].startswith("invalid resource") and by_line[8]["resource"].startswith("Condition/c-bad")
    assert "invalid subject reference" in by_line[9]["reason"]
    assert summary["errors"]["total"] == 6


def test_dangling_study_reference_is_reported_but_patient_evaluated(tmp_path: Path, rules_dir: Path) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [
        patient("p1"), ms("c1", "Patient/p1"),
        jugular_angioplasty("sr1", "Patient/p1", **linked_to("nowhere")),
        {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study",
         "study": {"reference": "ResearchStudy/missing"}, "individual": {"reference": "Patient/p1"}},
        jugular_angioplasty("sr2", "Patient/p1", reasonReference=[{"reference": "Condition/gone"}]),
        {"resourceType": "ResearchSubject", "id": "rs2", "status": "withdrawn",
         "study": {"reference": "ResearchStudy/elsewhere"}, "individual": {"reference": "Patient/p1"}},
    ])
    _, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert [(f["serviceRequest"], f["rule"]) for f in findings] == [
        ("ServiceRequest/sr1", "venous-angioplasty-ms"), ("ServiceRequest/sr2", "venous-angioplasty-ms")]
    assert sorted((e["line"], e["reason"]) for e in errors) == [
        (3, "dangling reference to ResearchStudy/nowhere: its status cannot be confirmed"),
        (4, "dangling reference to ResearchStudy/missing"),
        (5, "dangling reference to Condition/gone (not found for this patient)"),
        (5, "dangling reference to ResearchStudy/missing: its status cannot be confirmed"),
        (6, "dangling reference to ResearchStudy/elsewhere"),
    ]


def test_duplicate_resource_later_record_wins(tmp_path: Path, rules_dir: Path) -> None:
    a = write_ndjson(tmp_path / "a.ndjson", [patient("p1"), ms("c1", "Patient/p1"), mri("sr1", "Patient/p1")])
    b = write_ndjson(tmp_path / "b.ndjson", [jugular_angioplasty("sr1", "Patient/p1")])
    summary, findings, errors = audit(rules_dir, tmp_path / "out", a, b)
    assert [f["source"]["file"] for f in findings] == [str(b)]
    assert len(errors) == 1 and errors[0]["file"] == str(a) and errors[0]["line"] == 3
    assert "duplicate resource ServiceRequest/sr1" in errors[0]["reason"]
    assert summary["serviceRequestsEvaluated"] == 1


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path, rules_dir: Path) -> None:
    good = [patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1")]
    filler = [mri(f"m{i}", f"Patient/x{i}") for i in range(3000)]
    data = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in good + filler))
    path = tmp_path / "cut.ndjson.gz"
    path.write_bytes(data[: len(data) // 2])
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert [f["serviceRequest"] for f in findings] == ["ServiceRequest/sr1"]
    assert len(errors) == 1 and "unreadable from here on" in errors[0]["reason"]
    assert 3 < summary["read"]["total"] < 3003


@pytest.mark.parametrize("case", ["missing", "not-fhir", "manifest-missing-file", "manifest-outside", "empty-dir",
                                  "csv"])
def test_unreadable_input_stops_before_any_work(case: str, tmp_path: Path, rules_dir: Path) -> None:
    good = write_ndjson(tmp_path / "good.ndjson", [patient("p1")])
    if case == "missing":
        bad, expect = tmp_path / "nope.ndjson", "no such file"
    elif case == "not-fhir":
        bad = tmp_path / "x.ndjson"
        bad.write_text('{"hello": "world"}\n{"a": 1}\n')
        expect = "not FHIR"
    elif case == "manifest-missing-file":
        bad = tmp_path / "export"
        bad.mkdir()
        (bad / "manifest.json").write_text('{"output": [{"type": "Patient", "url": "https://h/Patient.ndjson"}]}')
        expect = "Patient.ndjson"
    elif case == "manifest-outside":
        bad = tmp_path / "export2"
        bad.mkdir()
        (bad / "manifest.json").write_text('{"output": [{"type": "Patient", "url": "../good.ndjson"}]}')
        expect = "good.ndjson"
    elif case == "empty-dir":
        bad = tmp_path / "empty"
        bad.mkdir()
        expect = "no FHIR files"
    else:
        bad = tmp_path / "data.json"
        bad.write_text("id,name\n1,x\n")
        expect = "not a FHIR JSON"
    out = tmp_path / "out"
    result = CliRunner().invoke(audit_cmd, [str(good), str(bad), "--out", str(out), "--rules", str(rules_dir)])
    assert result.exit_code == 1
    assert "cannot audit" in result.output and expect in result.output
    assert not out.exists() or not any(out.iterdir())


def test_cli_runs_and_summarises(tmp_path: Path, rules_dir: Path) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), ms("c1", "Patient/p1"),
                                                 jugular_angioplasty("sr1", "Patient/p1")])
    out = tmp_path / "out"
    result = CliRunner().invoke(audit_cmd, [str(path), "--out", str(out), "--rules", str(rules_dir),
                                            "--workers", "1", "--base-url", "https://cds.example.org",
                                            "--workdir", str(tmp_path / "scratch" / "new")])
    assert result.exit_code == 0, result.output
    assert "1 findings (venous-angioplasty-ms 1)" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    card = read_ndjson(out / "findings.ndjson")[0]["card"]
    assert "https://cds.example.org/" in orjson.dumps(card).decode()  # links as the EHR saw them
    assert list((tmp_path / "scratch" / "new").iterdir()) == []  # spill space used and cleaned up


def test_interrupted_audit_leaves_previous_outputs_consistent(tmp_path: Path, rules_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), ms("c1", "Patient/p1"),
                                                 jugular_angioplasty("sr1", "Patient/p1")])
    out = tmp_path / "out"
    audit(rules_dir, out, path)
    before = {n: (out / n).read_bytes() for n in OUTPUT_NAMES}
    write_ndjson(path, [patient("p1"), mri("sr2", "Patient/p1")])  # a different input

    def boom(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "write_report", boom)
    with pytest.raises(KeyboardInterrupt):
        run_audit(AuditOptions([str(path)], out, rules_dir, workers=1))
    assert {n: (out / n).read_bytes() for n in OUTPUT_NAMES} == before  # nothing half-replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # no staging or spill left behind
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert all(sha256_file(out / n) == d for n, d in summary["outputs"].items())


def test_interrupted_publish_never_leaves_a_stale_completion_marker(tmp_path: Path, rules_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), mri("sr2", "Patient/p1")])
    out = tmp_path / "out"
    audit(rules_dir, out, path)
    real_replace = outputs_mod.os.replace
    calls = []

    def flaky(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(outputs_mod.os, "replace", flaky)
    with pytest.raises(OSError):
        run_audit(AuditOptions([str(path)], out, rules_dir, workers=1))
    assert not (out / "summary.json").exists()  # no marker: the set is visibly incomplete


def test_findings_are_deterministic(tmp_path: Path, rules_dir: Path, small_export: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    audit(rules_dir, a, small_export, workers=2)
    audit(rules_dir, b, small_export, workers=1)
    for name in ("findings.ndjson", "findings.csv", "errors.ndjson"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "findings.ndjson").stat().st_size > 0


def test_workers_refuse_a_rule_pack_that_changed_during_the_audit(rules_dir: Path) -> None:
    from ccsvi_cds.audit.evaluator import PackChanged, build_evaluator
    from ccsvi_cds.rulepack import load_pack

    assert build_evaluator(str(rules_dir), load_pack(rules_dir).digest, None) is not None
    with pytest.raises(PackChanged, match="changed during the audit"):
        build_evaluator(str(rules_dir), "0" * 64, None)


def test_validate_option_reports_invalid_fhir(tmp_path: Path, rules_dir: Path) -> None:
    bad_status = jugular_angioplasty("sr2", "Patient/p1")
    bad_status["authoredOn"] = "yesterday"  # not a FHIR dateTime
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), ms("c1", "Patient/p1"),
                                                 jugular_angioplasty("sr1", "Patient/p1"), bad_status])
    out = tmp_path / "out"
    result = CliRunner().invoke(audit_cmd, [str(path), "--out", str(out), "--rules", str(rules_dir),
                                            "--workers", "1", "--validate"])
    assert result.exit_code == 0, result.output
    findings = read_ndjson(out / "findings.ndjson")
    errors = read_ndjson(out / "errors.ndjson")
    assert [f["serviceRequest"] for f in findings] == ["ServiceRequest/sr1"]
    assert [e["line"] for e in errors] == [4] and "invalid FHIR" in errors[0]["reason"]
    assert orjson.loads((out / "summary.json").read_bytes())["fhirValidation"] is True


def test_sigterm_mid_audit_leaves_no_partial_output(tmp_path: Path, rules_dir: Path, small_export: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ccsvi_cds", "audit", str(small_export), "--out", str(out),
                             "--rules", str(rules_dir), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.glob(".ccsvi-audit-spill-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # work has started once the spill directory exists
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the audit finished before the signal arrived")  # pragma: no cover - timing
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out.iterdir()) == []  # no spill, no staging, no output under a final name


def _die(*a: Any, **k: Any) -> None:
    import os

    os._exit(9)  # as the OOM killer would


def test_a_worker_dying_fails_cleanly(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccsvi_cds.audit import embedded

    monkeypatch.setattr(embedded, "_evaluate_shard", _die)  # submitted by reference to the forked workers
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), mri("sr1", "Patient/p1")])
    out = tmp_path / "out"
    result = CliRunner().invoke(audit_cmd, [str(path), "--out", str(out), "--rules", str(rules_dir)])
    assert result.exit_code == 1 and "worker process died" in result.output
    assert list(out.iterdir()) == []


def test_many_parts_merge_in_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from ccsvi_cds.audit import parts

    monkeypatch.setattr(parts, "FAN_IN", 4)
    keys = [f"{i:06d}" for i in range(300)]
    random.Random(1).shuffle(keys)
    paths = [parts.write_part(tmp_path / f"p{j}", [(k, f'"{k}"'.encode()) for k in keys[j::23]]) for j in range(23)]
    merged = [v.decode().strip('"') for v in parts.merge_parts([p for p in paths if p])]
    assert merged == sorted(keys)


def test_csv_cells_cannot_run_as_formulas(tmp_path: Path, rules_dir: Path) -> None:
    import csv

    sr = jugular_angioplasty("sr1", "Patient/p1")
    sr["requester"]["display"] = '=HYPERLINK("http://evil.example","click")'
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), ms("c1", "Patient/p1"), sr])
    audit(rules_dir, tmp_path / "out", path)
    with open(tmp_path / "out" / "findings.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["requesterName"] == "'" + sr["requester"]["display"]
    assert read_ndjson(tmp_path / "out" / "findings.ndjson")[0]["requesterName"] == sr["requester"]["display"]


def test_issue_on_a_resource_whose_id_has_dots_points_at_that_resource(tmp_path: Path, rules_dir: Path) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [
        patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1"),
        {"resourceType": "ResearchSubject", "id": "rs.1", "status": "on-study",
         "study": {"reference": "ResearchStudy/missing"}, "individual": {"reference": "Patient/p1"}},
    ])
    _, _, errors = audit(rules_dir, tmp_path / "out", path)
    dangling = [(e["line"], e["reason"]) for e in errors if "ResearchStudy/missing" in e["reason"]
                and "cannot be confirmed" not in e["reason"]]
    assert dangling == [(4, "dangling reference to ResearchStudy/missing")]
