"""A wheel built from the project, installed (not editable) into a fresh venv, used from an empty directory.

The venv gets the wheel alone (`--no-deps`); its dependencies come from the test environment's
site-packages through a `.pth` line (a plain path entry: the editable install's finder there is not
loaded), so the test is offline and fast while `pip check` still proves the wheel's declared
requirements are met. Every command runs with an empty working directory: no `./rules`, no source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("wheel")
EXAMPLE = REPO / "fhir_examples" / "positive-stent-azygos-spms.json"


NO_EXTRAS = """
import sys

EXTRAS = {"pyspark", "playwright", "pytest", "mypy", "ruff", "hypothesis"}


class NoExtras:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in EXTRAS:
            raise ImportError(f"{name} is an extra: the installed commands must not need it")
        return None


sys.meta_path.insert(0, NoExtras())
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(venv bin folder, empty working directory, environment) with the wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src-copy"  # build from a copy: setuptools writes build/ and *.egg-info into the tree
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "out", ".mypy_cache",
        ".ruff_cache"))
    dist = base / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCSVI_", "PYTHON", "VIRTUAL_ENV"))}
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(dist), str(src)], cwd=base, env=env)
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("ccsvi_cds-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=base, env=env).stdout.strip())
    (purelib / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (purelib / "_no_extras.py").write_text(NO_EXTRAS)  # what only tests and Spark need must not be needed
    (purelib / "_no_extras.pth").write_text("import _no_extras\n")
    inst = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                 "-q", str(wheel)], cwd=base, env=env)
    assert inst.returncode == 0, inst.stderr
    empty = base / "empty"
    empty.mkdir()
    return venv / "bin", empty, env


def test_the_installed_package_is_the_wheel_with_its_requirements_met(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bindir, cwd, env = installed
    where = _run([str(bindir / "python"), "-c", "import ccsvi_cds; print(ccsvi_cds.__file__)"], cwd, env)
    assert where.stdout.strip().startswith(str(bindir.parent)), where.stdout + where.stderr
    check = _run([str(bindir / "python"), "-m", "pip", "check"], cwd, env)
    assert "ccsvi-cds" not in check.stdout.lower(), check.stdout  # every requirement of the wheel is there
    probe = "from ccsvi_cds.bundled import bundled_rules_dir as b; d = b(); print(d, sorted(p.name for p in d.iterdir()))"
    files = _run([str(bindir / "python"), "-c", probe], cwd, env).stdout
    assert str(bindir.parent) in files and "pack.yaml" in files and "cases" in files


def test_rules_lint_test_docs_use_the_bundled_pack(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bindir, cwd, env = installed
    cli = str(bindir / "ccsvi-cds")
    lint = _run([cli, "rules", "lint"], cwd, env)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    from ccsvi_cds.rulepack import load_pack

    assert f"digest {load_pack(REPO / 'rules').digest[:12]}): clean" in lint.stdout  # the same pack as rules/
    test = _run([cli, "rules", "test"], cwd, env)
    assert test.returncode == 0, test.stdout + test.stderr
    assert ", 0 failed" in test.stdout
    docs = _run([cli, "rules", "docs", "--out", "catalogue.html"], cwd, env)
    assert docs.returncode == 0, docs.stdout + docs.stderr
    assert "venous-stent-ms" in (cwd / "catalogue.html").read_text()
    assert sorted(p.name for p in cwd.iterdir()) == ["catalogue.html"]


def test_check_and_audit_from_an_empty_directory(installed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    bindir, _, env = installed
    cli = str(bindir / "ccsvi-cds")
    shutil.copy(EXAMPLE, tmp_path / "order.json")
    check = _run([cli, "check", "order.json", "--base-url", "https://cds.example.org"], tmp_path, env)
    assert check.returncode == 0, check.stderr
    cards = json.loads(check.stdout)["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == ["venous-stent-ms"]
    assert any(link["url"].startswith("https://cds.example.org/") for link in cards[0]["links"])
    audit = _run([cli, "audit", "order.json", "--out", "audit", "--workers", "1",
                  "--base-url", "https://cds.example.org"], tmp_path, env)
    assert audit.returncode == 0, audit.stderr
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["serviceRequestsEvaluated"] == 1
    finding = json.loads((tmp_path / "audit" / "findings.ndjson").read_text().splitlines()[0])
    assert finding["rule"] == "venous-stent-ms"


def test_serve_answers_discovery(installed: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    bindir, _, env = installed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(bindir / "ccsvi-cds"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None, (tmp_path / "serve.log").read_text()
        assert answer.status_code == 200
        assert {s["id"] for s in answer.json()["services"]} == {"ccsvi-order-select", "ccsvi-order-sign"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert (tmp_path / "ccsvi-cds.sqlite3").exists()  # the database lands in the working directory


def test_extras_are_blocked_in_the_venv(installed: tuple[Path, Path, dict[str, str]]) -> None:
    """The guard above is real: the commands ran without the test and Spark extras."""
    bindir, cwd, env = installed
    probe = _run([str(bindir / "python"), "-c", "import pyspark"], cwd, env)
    assert probe.returncode != 0 and "is an extra" in probe.stderr


def test_make_run_installs_only_the_runtime_and_make_test_the_extras(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # as in a shell
    run = _run(["make", "-n", "--no-print-directory", "run", f"VENV={tmp_path / 'v'}"], REPO, env)
    test = _run(["make", "-n", "--no-print-directory", "test", f"VENV={tmp_path / 'v'}"], REPO, env)
    assert "pip install --quiet -e .\n" in run.stdout and "[" not in run.stdout.split("pip install --quiet -e")[-1]
    assert "-e '.[dev]'" in test.stdout
    assert f"{tmp_path / 'v'}/.installed-run" in run.stdout and f"{tmp_path / 'v'}/.installed-test" in test.stdout
