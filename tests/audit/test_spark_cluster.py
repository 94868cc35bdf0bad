"""Spark on a real standalone cluster: a master and two workers, each its own JVM on loopback, and
`ccsvi-cds audit --engine spark --spark-master spark://...` as a real subprocess. The findings are byte for byte
the embedded engine's; the package reached each executor as a zip through Spark (addPyFile), and that zip alone
is a working package; the executors ran this machine's venv Python (PYSPARK_PYTHON), as every node of a
cluster must (the dependencies have compiled parts: they are not shipped as zips)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from bench._spark_cluster import standalone_cluster
from bench.generate_export import generate
from ccsvi_cds.audit.run import AuditOptions, run_audit

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark"), pytest.mark.timeout(300)]

SAME = ("findings.ndjson", "findings.csv", "errors.ndjson")
SAME_SUMMARY = ("read", "patientsJoined", "serviceRequestsEvaluated", "findings", "errors", "inputs", "rulePack")


def test_standalone_cluster_gives_the_embedded_findings(tmp_path: Path, rules_dir: Path) -> None:
    export = tmp_path / "bulk"
    info = generate(export, 8000, seed=11, per_file=2000, shape="referral")  # plain NDJSON: several tasks a file
    assert any(v != "silent" for v in info["truth"].values())
    # A bad record too (in place of one, so the manifest's count still holds): the cluster reports it at the
    # same file and line as the embedded engine.
    bad = export / "ServiceRequest.1.ndjson"
    lines = bad.read_bytes().splitlines(keepends=True)
    lines[1500] = b'{"resourceType": "ServiceRequest", "id": \n'
    bad.write_bytes(b"".join(lines))
    emb = run_audit(AuditOptions([str(export)], tmp_path / "embedded", rules_dir, workers=2))

    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    out = tmp_path / "spark"
    with standalone_cluster(tmp_path / "cluster", workers=2, cores=1, memory="1g") as cluster:
        conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1", "spark.executor.memory": "512m",
                "spark.driver.memory": "512m",
                # start work only once both executors are up, so that both get tasks
                "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s"}
        cmd = [sys.executable, "-m", "ccsvi_cds", "audit", str(export), "--out", str(out), "--engine", "spark",
               "--spark-master", cluster.master_url]
        for k, v in conf.items():
            cmd += ["--spark-conf", f"{k}={v}"]
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=180)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]

    spk = orjson.loads((out / "summary.json").read_bytes())
    assert spk["engine"] == "spark" and emb["engine"] == "embedded"
    for name in SAME:
        assert (out / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes(), name
    for key in SAME_SUMMARY:
        assert spk[key] == emb[key], key
    assert emb["findings"]["total"] > 0 and emb["errors"]["total"] == 1
    error = orjson.loads((out / "errors.ndjson").read_bytes())
    assert (error["file"], error["line"]) == (str(bad), 1501)

    # Each worker ran an executor (its own JVM, in its own work directory) that fetched the package zip
    # (PySpark's workers put it first on sys.path).
    for wdir in cluster.worker_dirs:
        executors = [d for d in wdir.glob("app-*/*") if d.is_dir()]
        assert executors, f"no executor ran on {wdir.name}"
        for ex in executors:
            shipped = ex / "ccsvi_cds.zip"
            assert shipped.is_file(), sorted(p.name for p in ex.iterdir())
            assert "ccsvi_cds/audit/spark.py" in zipfile.ZipFile(shipped).namelist()


CHECK_ZIP = """
import sys
from pathlib import Path
sys.path.insert(1, sys.argv[1])  # where PySpark's worker puts a shipped zip: ahead of site-packages
from ccsvi_cds.audit.run import AuditOptions, run_audit
run_audit(AuditOptions([sys.argv[2]], Path(sys.argv[3]), Path(sys.argv[4]), workers=1))
files = [getattr(m, "__file__", None) or "" for n, m in list(sys.modules.items()) if n.startswith("ccsvi_cds")]
elsewhere = [f for f in files if not f.startswith(sys.argv[1] + "/")]
assert len(files) > 20 and not elsewhere, elsewhere
"""


def test_the_shipped_zip_alone_is_the_package(tmp_path: Path, rules_dir: Path) -> None:
    """What an executor imports: every ccsvi_cds module comes from the zip, and an audit run from it gives the
    same findings (sources and package data are all there)."""
    from ccsvi_cds.audit.spark import package_zip

    export = tmp_path / "bulk"
    generate(export, 3000, seed=11, shape="referral")
    here = run_audit(AuditOptions([str(export)], tmp_path / "here", rules_dir, workers=1))
    shipped = package_zip(tmp_path)
    proc = subprocess.run([sys.executable, "-c", CHECK_ZIP, str(shipped), str(export), str(tmp_path / "zip"),
                           str(rules_dir)], check=False, capture_output=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    for name in SAME:
        assert (tmp_path / "zip" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name
    assert here["findings"]["total"] > 0
