"""Every input form the audit accepts, the reference spellings it joins on, and the per-patient join."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import (
    jugular_angioplasty,
    linked_to,
    mri,
    ms,
    patient,
    read_ndjson,
    study,
    write_bundle,
    write_ndjson,
)

from ccsvi_cds.audit import sources
from ccsvi_cds.audit.run import AuditOptions, run_audit
from ccsvi_cds.audit.sources import Record, discover, plan_tasks, read_task


def audit(rules_dir: Path, out: Path, *inputs: Path | str, workers: int = 2) -> tuple[dict[str, Any], list, list]:
    summary = run_audit(AuditOptions([str(i) for i in inputs], out, rules_dir, workers=workers))
    return summary, read_ndjson(out / "findings.ndjson"), read_ndjson(out / "errors.ndjson")


def two_patients() -> list[dict[str, Any]]:
    """p1: MS and a jugular angioplasty order (fires); p2: an MRI referral (silent)."""
    return [patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1"),
            patient("p2"), mri("sr2", "Patient/p2")]


# ------------------------------------------------------------------------------------------ references


# ------------------------------------------------------------------------------------------ input forms


def _as_ndjson(d: Path) -> list[Path]:
    return [write_ndjson(d / "all.ndjson", two_patients())]


def _as_ndjson_gz(d: Path) -> list[Path]:
    return [write_ndjson(d / "all.ndjson.gz", two_patients(), gz=True)]


def _as_bundle(d: Path) -> list[Path]:
    return [write_bundle(d / "bundle.json", two_patients(), urn=True)]


def _as_bundle_absolute(d: Path) -> list[Path]:
    return [write_bundle(d / "bundle.json", two_patients(), urn=False)]


def _as_ndjson_of_bundles(d: Path) -> list[Path]:
    """One Bundle per NDJSON line (as some EHR extracts ship), urn:uuid references inside each."""
    res = two_patients()
    lines = []
    for i, group in enumerate((res[:3], res[3:])):
        b = write_bundle(d / f"b{i}.json", group, urn=True)
        lines.append(b.read_bytes())
        b.unlink()
    return [write_ndjson(d / "bundles.ndjson", lines)]


def _as_bulk_export(d: Path) -> list[Path]:
    exp = d / "export"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in two_patients():
        by_type.setdefault(r["resourceType"], []).append(r)
    output = []
    for t, rs in by_type.items():
        # several files per type, one of them gzip'd
        write_ndjson(exp / f"{t}.1.ndjson", rs[:1])
        output.append({"type": t, "url": f"https://ehr.example.org/bulk/{t}.1.ndjson"})
        if len(rs) > 1:
            write_ndjson(exp / f"{t}.2.ndjson.gz", rs[1:], gz=True)
            output.append({"type": t, "url": f"https://ehr.example.org/bulk/{t}.2.ndjson.gz"})
    (exp / "manifest.json").write_bytes(orjson.dumps({"transactionTime": "2025-01-01T00:00:00Z",
                                                      "request": "x", "requiresAccessToken": True,
                                                      "output": output, "error": []}))
    (exp / "not-listed.ndjson").write_text("this file is not in the manifest and must be ignored\n")
    return [exp]


def _as_mixed_directory(d: Path) -> list[Path]:
    root = d / "mixed"
    res = two_patients()
    write_bundle(root / "a" / "patients.json", [res[0], res[3]])
    write_ndjson(root / "a" / "conditions.ndjson.gz", [res[1]], gz=True)
    write_ndjson(root / "b" / "orders.ndjson", [res[2], res[4]])
    (root / "README.txt").write_text("ignored: not a FHIR file name")
    return [root]


FORMS = {"ndjson": _as_ndjson, "ndjson.gz": _as_ndjson_gz, "ndjson-of-bundles": _as_ndjson_of_bundles, "bundle-urn-uuid": _as_bundle,
         "bundle-absolute": _as_bundle_absolute, "bulk-export": _as_bulk_export, "directory": _as_mixed_directory}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_input_form_gives_the_finding(form: str, tmp_path: Path, rules_dir: Path) -> None:
    inputs = FORMS[form](tmp_path / "in")
    summary, findings, errors = audit(rules_dir, tmp_path / "out", *inputs)
    assert errors == []
    assert [(f["serviceRequest"], f["patient"], f["rule"]) for f in findings] == \
        [("ServiceRequest/sr1", "Patient/p1", "venous-angioplasty-ms")]
    assert summary["read"]["byType"] == {"Condition": 1, "Patient": 2, "ServiceRequest": 2}
    assert summary["serviceRequestsEvaluated"] == 2
    src = findings[0]["source"]
    assert Path(src["file"]).exists()
    assert (src["line"] is not None) or (src["entry"] is not None)


def test_large_bundle_is_streamed(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles above the in-memory limit go through ijson (two passes); same finding, entry provenance."""
    monkeypatch.setattr(sources, "BUNDLE_IN_MEMORY_MAX", 0)  # inherited by the forked workers
    path = write_bundle(tmp_path / "big.json", two_patients(), urn=True)
    _, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert errors == []
    assert [f["rule"] for f in findings] == ["venous-angioplasty-ms"]
    assert findings[0]["source"] == {"file": str(path), "line": None, "entry": 3}


def test_ndjson_source_lines_are_exact_across_chunks(tmp_path: Path) -> None:
    lines = [orjson.dumps(mri(f"s{i}", f"Patient/p{i}")) for i in range(500)]
    lines[7] = b""  # blank lines count as lines
    path = tmp_path / "many.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    files = discover([str(path)])
    tasks = plan_tasks(files, chunk_bytes=1000)
    assert len(tasks) > 10
    seen = {}
    for t in tasks:
        for rec in read_task(files, t):
            assert isinstance(rec, Record)
            seen[rec.resource["id"]] = rec.line
    assert len(seen) == 499
    assert all(seen[f"s{i}"] == i + 1 for i in range(500) if i != 7)


def test_chunked_reading_end_to_end(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many read tasks per file: line numbers of findings and errors are still the file's own."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 300)
    lines: list[Any] = [mri(f"m{i}", f"Patient/q{i}") for i in range(200)]
    for at in (4, 77, 150):  # malformed lines in different tasks (0-based positions)
        lines[at] = b'{"resourceType": "ServiceRequest", "id": '
    lines += [patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1"), b"", b"[]"]
    path = write_ndjson(tmp_path / "in.ndjson", lines)
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert summary["read"]["total"] == 200 - 3 + 3
    assert summary["serviceRequestsEvaluated"] == 197 + 1
    assert findings[0]["source"]["line"] == 203
    assert [(e["line"], e["reason"].split(":")[0]) for e in errors] == [
        (5, "malformed JSON"), (78, "malformed JSON"), (151, "malformed JSON"), (205, "not a FHIR resource (no resourceType)")]


def test_cut_tasks_number_lines_like_the_full_scan(tmp_path: Path) -> None:
    """Tasks cut without reading the file, numbered afterwards from their line counts, give the same line
    numbers as tasks planned by scanning the whole file (what the Spark engine uses)."""
    rows = [orjson.dumps(mri(f"s{i}", f"Patient/p{i}")) + (b" " * (i % 97)) for i in range(700)]
    path = tmp_path / "many.ndjson"
    path.write_bytes(b"\n".join(rows))  # no newline at the end
    files = discover([str(path)])
    scanned = {}
    for t in plan_tasks(files, chunk_bytes=1500):
        for rec in read_task(files, t):
            assert isinstance(rec, Record)
            scanned[rec.resource["id"]] = rec.line
    cut = list(sources.iter_cut_tasks(files, chunk_bytes=1500))
    assert len(cut) > 20 and all(t.first_line is None for t in cut[1:])
    local: list[tuple[int, Any, int]] = []
    relative = {}
    for i, t in enumerate(cut):
        meta: dict[str, int] = {}
        for rec in read_task(files, t, None, None, meta):
            assert isinstance(rec, Record)
            relative[rec.resource["id"]] = (i, rec.line)
        local.append((i, t, meta["lines"]))
    offsets = sources.line_offsets(local)
    assert {k: line + offsets[i] for k, (i, line) in relative.items()} == scanned
    assert scanned["s699"] == 700


def test_patient_joined_across_files_and_spellings(tmp_path: Path, rules_dir: Path) -> None:
    """MS in one file, the order in a Bundle elsewhere, the trial enrolment in a third file: one patient."""
    write_ndjson(tmp_path / "a" / "Condition.ndjson", [ms("c1", "https://ehr.example.org/fhir/Patient/p1")])
    write_ndjson(tmp_path / "a" / "Condition.2.ndjson.gz", [ms("c2", "Patient/p2/_history/4")], gz=True)
    write_bundle(tmp_path / "b" / "orders.json", [
        patient("p1"), jugular_angioplasty("sr1", "Patient/p1"),
        patient("p2"), jugular_angioplasty("sr2", "Patient/p2"),
    ])
    write_ndjson(tmp_path / "c" / "research.ndjson", [
        study("trial", "active"),
        {"resourceType": "ResearchSubject", "id": "rs2", "status": "on-study",
         "study": {"reference": "ResearchStudy/trial"}, "individual": {"reference": "Patient/p2"}},
    ])
    _, findings, errors = audit(rules_dir, tmp_path / "out", tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert errors == []
    got = {(f["serviceRequest"], f["rule"]) for f in findings}
    assert got == {("ServiceRequest/sr1", "venous-angioplasty-ms"), ("ServiceRequest/sr2", "ccsvi-trial")}
    trial = next(f for f in findings if f["rule"] == "ccsvi-trial")
    assert trial["card"]["indicator"] == "info"
    assert trial["matched"]  # the facts that matched travel with the finding


def test_study_linked_by_extension_is_attached(tmp_path: Path, rules_dir: Path) -> None:
    write_ndjson(tmp_path / "in.ndjson", [
        study("st-ok", "approved"), study("st-gone", "withdrawn"),
        patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1", **linked_to("st-ok")),
        patient("p2"), ms("c2", "Patient/p2"), jugular_angioplasty("sr2", "Patient/p2", **linked_to("st-gone")),
    ])
    _, findings, _ = audit(rules_dir, tmp_path / "out", tmp_path / "in.ndjson")
    assert {(f["serviceRequest"], f["rule"]) for f in findings} == {
        ("ServiceRequest/sr1", "ccsvi-trial"), ("ServiceRequest/sr2", "venous-angioplasty-ms")}


def test_every_status_but_entered_in_error_is_evaluated(tmp_path: Path, rules_dir: Path) -> None:
    statuses = ["draft", "active", "on-hold", "revoked", "completed", "unknown", "entered-in-error"]
    res: list[dict[str, Any]] = [patient("p1"), ms("c1", "Patient/p1")]
    res += [jugular_angioplasty(f"sr-{s}", "Patient/p1", status=s) for s in statuses]
    write_ndjson(tmp_path / "in.ndjson", res)
    summary, findings, _ = audit(rules_dir, tmp_path / "out", tmp_path / "in.ndjson")
    assert summary["serviceRequestsEvaluated"] == len(statuses) - 1
    assert sorted(f["status"] for f in findings) == sorted(s for s in statuses if s != "entered-in-error")


def test_gzip_bundle_and_single_resource_json(tmp_path: Path, rules_dir: Path) -> None:
    b = write_bundle(tmp_path / "b.json", two_patients())
    gz = tmp_path / "b.json.gz"
    gz.write_bytes(gzip.compress(b.read_bytes()))
    b.unlink()
    single = tmp_path / "one.json"
    single.write_bytes(orjson.dumps(mri("sr9", "Patient/p9")))
    summary, findings, _ = audit(rules_dir, tmp_path / "out", gz, single)
    assert summary["read"]["byType"]["ServiceRequest"] == 3
    assert [f["serviceRequest"] for f in findings] == ["ServiceRequest/sr1"]


def test_transaction_bundle_nested_bundle_and_r5_subject(tmp_path: Path, rules_dir: Path) -> None:
    """DELETE entries carry no resource (skipped silently); a Bundle inside a Bundle is read; an R5
    ResearchSubject joins through `subject`."""
    inner = {"resourceType": "Bundle", "type": "collection",
             "entry": [{"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "resource": ms("c1", "Patient/p1")}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "ServiceRequest/old"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002", "resource": patient("p1"),
         "request": {"method": "PUT", "url": "Patient/p1"}},
        {"resource": inner},
        {"resource": jugular_angioplasty("sr1", "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002")},
        {"resource": study("trial", "active")},
        {"resource": {"resourceType": "ResearchSubject", "id": "rs1", "status": "active",  # R5 shape
                      "progress": [{"subjectState": {"coding": [{"code": "on-study"}]}}],
                      "study": {"reference": "ResearchStudy/trial"},
                      "subject": {"reference": "Patient/p1"}}},
    ]}
    path = tmp_path / "tx.json"
    path.write_bytes(orjson.dumps(bundle))
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert errors == []
    assert summary["read"]["byType"] == {"Condition": 1, "Patient": 1, "ResearchStudy": 1, "ResearchSubject": 1,
                                         "ServiceRequest": 1}
    assert [(f["serviceRequest"], f["patient"], f["rule"]) for f in findings] == [
        ("ServiceRequest/sr1", "Patient/p1", "ccsvi-trial")]
    assert findings[0]["source"] == {"file": str(path), "line": None, "entry": 4}


def test_requester_is_a_reference_or_nothing_never_its_display(tmp_path: Path, rules_dir: Path) -> None:
    """A requester given only by display used to come out as the requester reference."""
    sr = jugular_angioplasty("sr1", "Patient/p1", requester={"display": "Dr Display Only"})
    path = write_ndjson(tmp_path / "in.ndjson", [patient("p1"), ms("c1", "Patient/p1"), sr])
    _, findings, _ = audit(rules_dir, tmp_path / "out", path)
    assert [(f["requester"], f["requesterName"]) for f in findings] == [(None, "Dr Display Only")]
