"""Hostile and damaged inputs, kills and real export directories (issue 10 items 8-11, issue 12 items 4-5)."""

from __future__ import annotations

import fcntl
import gzip
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import jugular_angioplasty, mri, ms, patient, read_ndjson, write_bundle, write_ndjson
from click.testing import CliRunner

from ccsvi_cds.audit import sources
from ccsvi_cds.audit.cli import audit as audit_cmd
from ccsvi_cds.audit.run import AuditOptions, run_audit
from ccsvi_cds.audit.scratch import LOCK_NAME, SPILL_PREFIX, lock_held

FINDING = ("ServiceRequest/sr1", "venous-angioplasty-ms")


def audit(rules_dir: Path, out: Path, *inputs: Path, workers: int = 2, **kw: Any) -> tuple[dict[str, Any], list, list]:
    summary = run_audit(AuditOptions([str(i) for i in inputs], out, rules_dir, workers=workers, **kw))
    return summary, read_ndjson(out / "findings.ndjson"), read_ndjson(out / "errors.ndjson")


def cli(rules_dir: Path, out: Path, *args: str) -> Any:
    return CliRunner().invoke(audit_cmd, [*args, "--out", str(out), "--rules", str(rules_dir), "--workers", "1"])


def good() -> list[dict[str, Any]]:
    return [patient("p1"), ms("c1", "Patient/p1"), jugular_angioplasty("sr1", "Patient/p1")]


def deep_line(depth: int, rtype: str) -> bytes:
    return b'{"resourceType":"' + rtype.encode() + b'","id":"d","x":' + b"[" * depth + b"]" * depth + b"}"


def found(findings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f["serviceRequest"], f["rule"]) for f in findings]


# ------------------------------------------------------------------------- 10.8: deep nesting is a bad record


def deep_ndjson(tmp_path: Path) -> Path:
    # line 2: a type the rules never read (simdjson's depth limit), line 4: one they read (orjson's)
    return write_ndjson(tmp_path / "deep.ndjson", [patient("p1"), deep_line(5000, "Observation"), ms("c1", "Patient/p1"),
                                                   deep_line(1100, "Condition"), jugular_angioplasty("sr1", "Patient/p1")])


def test_deeply_nested_ndjson_lines_are_reported_and_skipped(tmp_path: Path, rules_dir: Path) -> None:
    path = deep_ndjson(tmp_path)
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert found(findings) == [FINDING]
    assert [(e["file"], e["line"]) for e in errors] == [(str(path), 2), (str(path), 4)]
    assert all("nested too deeply" in e["reason"] for e in errors)
    assert summary["complete"] is True


@pytest.mark.parametrize("gz", [False, True])
def test_deeply_nested_bundle_entries_are_reported_and_skipped(gz: bool, tmp_path: Path, rules_dir: Path) -> None:
    entries = [orjson.dumps({"resource": r}) for r in good()]
    entries[2:2] = [b'{"resource":' + deep_line(depth, "Observation") + b"}" for depth in (300, 5000)]
    path = tmp_path / "b.json"
    path.write_bytes(b'{"resourceType":"Bundle","type":"collection","entry":[' + b",".join(entries) + b"]}")
    if gz:
        path = path.rename(tmp_path / "b.json.gz")
        path.write_bytes(gzip.compress(path.read_bytes()))
    _, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert found(findings) == [FINDING]
    assert [(e["file"], e["entry"]) for e in errors] == [(str(path), 3), (str(path), 4)]
    assert all("nested too deeply" in e["reason"] for e in errors)


@pytest.mark.spark
@pytest.mark.xdist_group("spark")
def test_spark_reports_deep_lines_like_the_embedded_engine(spark: Any, tmp_path: Path, rules_dir: Path) -> None:
    path = deep_ndjson(tmp_path)
    emb = audit(rules_dir, tmp_path / "emb", path)
    spk = audit(rules_dir, tmp_path / "spk", path, engine="spark")
    assert found(spk[1]) == [FINDING]
    assert spk[2] == emb[2] and len(spk[2]) == 2


# ------------------------------------------------------------------------- 10.9: gzip Bundles are streamed


def test_gzip_bundle_memory_does_not_grow_with_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip Bundle that inflates past the in-memory limit is streamed entry by entry: peak memory stays near
    the limit, however small the compressed file (here 24 MB of JSON in well under the limit compressed)."""
    limit = 4 * 1024 * 1024
    monkeypatch.setattr(sources, "BUNDLE_IN_MEMORY_MAX", limit)
    pad = "A" * 4000
    entries = [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                             "code": {"text": pad}}} for i in range(6000)]
    raw = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
    del entries
    path = tmp_path / "big.json.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=6))
    assert len(raw) > 5 * limit and path.stat().st_size < limit // 8  # small file, large content
    del raw
    files = sources.discover([str(path)])
    tracemalloc.start()
    try:
        n = sum(1 for r in sources.read_task(files, sources.ReadTask(0)) if isinstance(r, sources.Record))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 6000
    assert peak < 2 * limit, f"peak {peak / 1e6:.1f} MB while reading a gzip Bundle"


def test_streamed_gzip_bundle_gives_the_finding(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BUNDLE_IN_MEMORY_MAX", 64)  # every Bundle streams (inherited by the workers)
    plain = write_bundle(tmp_path / "b.json", [patient("p1"), ms("c1", "Patient/p1"),
                                               jugular_angioplasty("sr1", "Patient/p1")], urn=True)
    path = tmp_path / "b.json.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    _, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert errors == [] and found(findings) == [FINDING]
    assert findings[0]["source"] == {"file": str(path), "line": None, "entry": 3}


# ------------------------------------------------------------------------- 10.10: truncated files are loud


def cut_gzip(path: Path, resources: list[Any]) -> Path:
    data = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_gzip_fails_the_audit_loudly(tmp_path: Path, rules_dir: Path) -> None:
    path = cut_gzip(tmp_path / "cut.ndjson.gz", [*good(), *(mri(f"m{i}", f"Patient/x{i}") for i in range(3000))])
    out = tmp_path / "out"
    result = cli(rules_dir, out, str(path))
    assert result.exit_code == 3, result.output
    assert "INCOMPLETE" in result.output and str(path) in result.output
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["complete"] is False
    assert [(i["file"], i["kind"]) for i in summary["incomplete"]] == [(str(path), "truncated")]
    assert summary["errors"]["byKind"]["truncated"] == 1
    errors = read_ndjson(out / "errors.ndjson")
    assert [(e["file"], e["reason"].split(":")[0]) for e in errors] == [(str(path), "truncated")]
    assert found(read_ndjson(out / "findings.ndjson")) == [FINDING]  # what was read is kept
    report = (out / "report.html").read_text()
    assert 'id="incomplete"' in report and str(path) in report
    assert cli(rules_dir, tmp_path / "out2", str(path), "--allow-incomplete").exit_code == 0


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_bundle_keeps_the_entries_before_the_cut(gz: bool, tmp_path: Path, rules_dir: Path) -> None:
    full = write_bundle(tmp_path / "b.json", [*good(), *(mri(f"m{i}", f"Patient/x{i}") for i in range(200))],
                        urn=False).read_bytes()
    path = tmp_path / ("cut.json.gz" if gz else "cut.json")
    cut = full[: len(full) * 2 // 3]
    path.write_bytes(gzip.compress(full)[: len(gzip.compress(full)) * 2 // 3] if gz else cut)
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path)
    assert found(findings) == [FINDING]
    assert [i["kind"] for i in summary["incomplete"]] == ["truncated"]
    assert errors[-1]["file"] == str(path) and errors[-1]["reason"].startswith("truncated:")


def test_a_plain_ndjson_file_cut_mid_line_is_truncated(tmp_path: Path, rules_dir: Path) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in [*good(), mri("m1", "Patient/x1")])
    path = tmp_path / "cut.ndjson"
    path.write_bytes(data[:-20])
    whole = tmp_path / "no-final-newline.ndjson"
    whole.write_bytes(orjson.dumps(patient("p2")) + b"\n" + orjson.dumps(mri("m2", "Patient/p2")))  # valid
    summary, findings, errors = audit(rules_dir, tmp_path / "out", path, whole)
    assert found(findings) == [FINDING]
    assert [(i["file"], i["kind"]) for i in summary["incomplete"]] == [(str(path), "truncated")]
    assert [(e["file"], e["line"]) for e in errors] == [(str(path), 4)]


def test_a_bundle_broken_midway_is_unreadable_a_broken_resource_file_is_one_bad_record(
        tmp_path: Path, rules_dir: Path) -> None:
    full = write_bundle(tmp_path / "b.json", [*good(), mri("m1", "Patient/x1"), mri("m2", "Patient/x2")],
                        urn=False).read_bytes()
    broken = tmp_path / "broken.json"
    broken.write_bytes(full.replace(b'"id":"m1"', b'"id":"m1",}'))
    single = tmp_path / "patient.json"
    single.write_bytes(b'{"resourceType":"Patient","id":"p9",}')
    summary, findings, errors = audit(rules_dir, tmp_path / "out", broken, single)
    assert found(findings) == [FINDING]  # the entries before the fault
    assert [(i["file"], i["kind"]) for i in summary["incomplete"]] == [(str(broken), "unreadable")]
    assert [(e["file"], e["reason"].split(":")[0]) for e in errors] == \
        [(str(broken), "unreadable"), (str(single), "malformed JSON")]
    assert all("\n" not in e["reason"] for e in errors)


def manifest_export(root: Path, counts: dict[str, int | None]) -> Path:
    res = {"Patient": [patient("p1")], "Condition": [ms("c1", "Patient/p1")],
           "ServiceRequest": [jugular_angioplasty("sr1", "Patient/p1"), mri("sr2", "Patient/p1")]}
    output = []
    for t, rs in res.items():
        write_ndjson(root / f"{t}.ndjson", rs)
        item: dict[str, Any] = {"type": t, "url": f"https://ehr.example.org/bulk/{t}.ndjson"}
        if counts.get(t) is not None:
            item["count"] = counts[t]
        output.append(item)
    (root / "manifest.json").write_bytes(orjson.dumps({"transactionTime": "2025-01-01T00:00:00Z", "request": "x",
                                                       "requiresAccessToken": True, "output": output, "error": []}))
    return root


def test_manifest_counts_are_checked(tmp_path: Path, rules_dir: Path) -> None:
    ok = manifest_export(tmp_path / "ok", {"Patient": 1, "Condition": 1, "ServiceRequest": 2})
    summary, _, errors = audit(rules_dir, tmp_path / "out1", ok)
    assert summary["complete"] is True and errors == []
    short = manifest_export(tmp_path / "short", {"Patient": 1, "ServiceRequest": 5})
    summary, findings, errors = audit(rules_dir, tmp_path / "out2", short)
    assert found(findings) == [FINDING]
    assert [(i["file"], i["kind"]) for i in summary["incomplete"]] == [(str(short / "ServiceRequest.ndjson"), "truncated")]
    assert "lists 5 resources in this file, 2 were read" in errors[0]["reason"]


# ------------------------------------------------------------------------- 10.11: spill is private and cleaned


def _audit_process(rules_dir: Path, inputs: Path, out: Path, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ccsvi_cds", "audit", str(inputs), "--out", str(out),
                             "--rules", str(rules_dir), "--workers", "2", "--workdir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_sigkill_leaves_no_clinical_data_in_the_output_and_the_next_audit_cleans_up(
        tmp_path: Path, rules_dir: Path) -> None:
    from bench.generate_export import generate

    export = tmp_path / "export"
    generate(export, 60000, seed=5, gz=False, per_file=60000)
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _audit_process(rules_dir, export, out, work)
    spill: list[Path] = []
    deadline = time.monotonic() + 120
    while not spill and proc.poll() is None and time.monotonic() < deadline:
        spill = [p for p in work.glob(f"{SPILL_PREFIX}*/spill/*") if p.stat().st_size > 0] if work.exists() else []
        time.sleep(0.01)
    try:
        assert spill, "the audit finished before any spill was seen"
        os.kill(proc.pid, signal.SIGKILL)  # the audit process alone, as the OOM killer or kill -9 would
        proc.wait(30)
        left = [p for p in work.iterdir() if p.name.startswith(SPILL_PREFIX)]
        assert len(left) == 1
        deadline = time.monotonic() + 30  # its workers die with it, releasing the spill directory's lock
        while lock_held(left[0] / LOCK_NAME) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lock_held(left[0] / LOCK_NAME), "a worker outlived the killed audit"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the test's own process group
        except ProcessLookupError:
            pass
    assert stat.S_IMODE(left[0].stat().st_mode) == 0o700  # no other user can read the clinical data
    assert not [p for p in out.iterdir() if p.name != "summary.json"] if out.exists() else True
    # A dead audit's spill goes at the next start; a live one's stays (its lock is held).
    live = work / f"{SPILL_PREFIX}live"
    live.mkdir()
    fd = os.open(live / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        small = write_ndjson(tmp_path / "small.ndjson", good())
        result = CliRunner().invoke(audit_cmd, [str(small), "--out", str(out), "--rules", str(rules_dir),
                                                "--workers", "1", "--workdir", str(work)])
        assert result.exit_code == 0, result.output
        assert not left[0].exists()
        assert [p.name for p in work.iterdir()] == [live.name]
    finally:
        os.close(fd)


def test_spill_defaults_to_a_private_temporary_directory(tmp_path: Path, rules_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    out = tmp_path / "out"
    out.mkdir()
    legacy = out / ".ccsvi-audit-spill-0123456789ab"  # left by an earlier version after a kill
    (legacy / "spill").mkdir(parents=True)
    (legacy / "spill" / "00000.1").write_text("Condition ...")
    seen: list[int] = []
    from ccsvi_cds.audit import embedded

    real = embedded.run_embedded

    def spy(files: Any, tasks: Any, rules: Path, workdir: Path, *a: Any, **k: Any) -> Any:
        assert workdir.parent == tmp and workdir.name.startswith(SPILL_PREFIX)
        seen.append(stat.S_IMODE(workdir.stat().st_mode))
        return real(files, tasks, rules, workdir, *a, **k)

    monkeypatch.setattr(embedded, "run_embedded", spy)
    _, findings, _ = audit(rules_dir, out, write_ndjson(tmp_path / "in.ndjson", good()), workers=1)
    assert seen == [0o700] and found(findings) == [FINDING]
    assert not legacy.exists() and list(tmp.iterdir()) == []
    text = " ".join(CliRunner().invoke(audit_cmd, ["--help"]).output.split())
    assert "system's temporary directory" in text and "private (0700)" in text


# ------------------------------------------------------------------------- 12.4: real export directories


SMART_LOG = [  # the export's own log, as the SMART bulk-data client writes it beside the files
    {"exportId": "1733000000000", "timestamp": 1733000000000, "eventId": "kickoff",
     "eventDetail": {"exportUrl": "https://ehr.example.org/fhir/$export", "responseHeaders": {}}},
    {"exportId": "1733000000000", "timestamp": 1733000005000, "eventId": "export_complete",
     "eventDetail": {"files": 3, "resources": 4, "bytes": 900, "attachments": None, "duration": 5000}},
]


def test_export_directory_with_a_log_and_other_files(tmp_path: Path, rules_dir: Path) -> None:
    root = tmp_path / "export"
    write_ndjson(root / "1.Patient.ndjson", [patient("p1")])
    write_ndjson(root / "1.Condition.ndjson", [ms("c1", "Patient/p1")])
    write_ndjson(root / "1.ServiceRequest.ndjson", [jugular_angioplasty("sr1", "Patient/p1")])
    write_ndjson(root / "log.ndjson", SMART_LOG)
    (root / "notes.txt").write_text("exported for the CCSVI audit\n")
    (root / "config.json").write_text('{"fhirUrl": "https://ehr.example.org/fhir"}')
    out = tmp_path / "out"
    result = CliRunner().invoke(audit_cmd, [str(root), "--out", str(out), "--rules", str(rules_dir),
                                  "--workers", "1"])
    assert result.exit_code == 0, result.output + result.stderr
    notices = [ln for ln in result.stderr.splitlines() if ln.startswith("notice: skipped")]
    assert sorted(ln.split()[2].rstrip(":") for ln in notices) == \
        sorted(str(root / n) for n in ("config.json", "log.ndjson", "notes.txt"))
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert [s["file"] for s in summary["skippedFiles"]] == [str(root / n) for n in ("config.json", "log.ndjson",
                                                                                    "notes.txt")]
    assert found(read_ndjson(out / "findings.ndjson")) == [FINDING]
    assert str(root / "log.ndjson") in (out / "report.html").read_text()
    # Named on the command line, the same log is an error.
    refused = cli(rules_dir, tmp_path / "out2", str(root / "log.ndjson"))
    assert refused.exit_code == 1 and "not FHIR" in refused.output


def hook_request(hook: str = "order-sign") -> dict[str, Any]:
    sr = jugular_angioplasty("sr1", "Patient/p1", status="draft")
    return {
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": hook,
        "context": {"userId": "Practitioner/dr-1", "patientId": "p1",
                    "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": sr}]}},
        "prefetch": {"patient": patient("p1"),
                     "conditions": {"resourceType": "Bundle", "type": "searchset",
                                    "entry": [{"resource": ms("c1", "Patient/p1")}]},
                     "procedures": None},
    }


def test_cds_hooks_request_files_are_audited(tmp_path: Path, rules_dir: Path) -> None:
    req = tmp_path / "requests" / "order-sign-1.json"
    req.parent.mkdir()
    req.write_bytes(orjson.dumps(hook_request()))
    summary, findings, errors = audit(rules_dir, tmp_path / "out", req.parent)
    assert errors == [] and found(findings) == [FINDING]
    # entries numbered through the request in the core's input order: prefetch (by key), then draft orders
    assert findings[0]["source"] == {"file": str(req), "line": None, "entry": 3}
    assert summary["read"]["byType"] == {"Condition": 1, "Patient": 1, "ServiceRequest": 1}


# ------------------------------------------------------------------------- 12.5: progress on a terminal only


def _run_with_stderr_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ccsvi_cds", *args], stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "COLUMNS": "200", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    rc = proc.wait(60)
    os.close(master)
    return rc, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_shows_counts_rate_and_time_left_on_a_terminal_only(tmp_path: Path, rules_dir: Path,
                                                                       small_export: Path) -> None:
    args = ["audit", str(small_export), "--rules", str(rules_dir), "--workers", "1", "--base-url", "https://cds.example.org"]
    rc, stdout, terminal = _run_with_stderr_on_a_terminal([*args, "--out", str(tmp_path / "tty")])
    assert rc == 0, terminal
    assert "read" in terminal and "evaluate" in terminal
    assert "gather" in terminal and "tasks read again" in terminal and "shards" in terminal
    assert " resources" in terminal and "/s" in terminal and "eta" in terminal  # counts, rate, time left
    assert len(stdout.strip().splitlines()) == 1
    quiet = subprocess.run([sys.executable, "-m", "ccsvi_cds", *args, "--out", str(tmp_path / "pipe")],
                           check=False, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert len(quiet.stdout.strip().splitlines()) == 1 and "findings" in quiet.stdout
