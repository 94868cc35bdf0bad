"""Messages that help: one typo gives its root cause first and alone; a failing case shows the actual text;
errors.ndjson never calls a skipped record fatal. The commands run as an author runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULE = "venous-stent-ms.yaml"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
    return subprocess.run([sys.executable, "-m", "ccsvi_cds", *args], cwd=cwd, env=env, capture_output=True, check=False,
                          text=True, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the pack beside the examples its cases read (cases name ../../fhir_examples/...)."""
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    shutil.copytree(REPO / "fhir_examples", tmp_path / "fhir_examples")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ": error: " in line]


@pytest.mark.parametrize(("old", "new", "token", "message"), [
    ("      fact: patient\n", "      fact: patinet\n", "fact: patinet", "when.0.patient.fact: 'patinet'"),
    ("  summary:", "  sumary:", "sumary:", "unknown field 'sumary': did you mean 'summary'?"),
    ("cite('samson-2010')", "cite('samson-2011')", "samson-2011", "unknown evidence id 'samson-2011'"),
])
def test_one_typo_gives_one_error_in_lint_and_test(project: Path, old: str, new: str, token: str, message: str) -> None:
    _edit(project / "rules" / RULE, old, new)
    line, text = next((i, t) for i, t in enumerate((project / "rules" / RULE).read_text().splitlines(), 1) if token in t)
    expected = f"rules/{RULE}:{line}:{text.index(token) + 1}: error: {message}"
    lint = _cli(["rules", "lint", "rules"], project)
    assert lint.returncode == 1
    assert len(_error_lines(lint.stdout)) == 1 and _error_lines(lint.stdout)[0].startswith(expected), lint.stdout
    test = _cli(["rules", "test", "rules"], project)
    assert test.returncode == 1 and "Traceback" not in test.stderr, test.stderr
    assert len(_error_lines(test.stderr)) == 1 and _error_lines(test.stderr)[0].startswith(expected), test.stderr


def test_a_failing_case_shows_the_actual_text_beside_the_expected(project: Path) -> None:
    _edit(project / "rules" / "cases" / RULE, '"Progressive MS"', '"Progressive  MS"')
    test = _cli(["rules", "test", "rules"], project)
    assert test.returncode == 1
    lines = test.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "does not contain the expected text" in line)
    assert lines[at + 1].strip() == "expected: 'Progressive  MS'"
    assert lines[at + 2].strip().startswith("actual:   '- **Progressive MS:**")
    assert any(re.fullmatch(r"\d+ passed, 1 failed, \d+ case\(s\)", line) for line in lines)


def test_errors_ndjson_never_calls_a_skipped_record_fatal(tmp_path: Path) -> None:
    order = {"resourceType": "ServiceRequest", "id": "s1", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "code": {"text": "jugular venoplasty"}}
    lines = ['{"resourceType":"Patient","id":"p1"}', '{"resourceType": "Patient", "id": "p2",, }',
             '{"resourceType": "Patient", "id": "p3"', json.dumps(order)]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    audit = _cli(["audit", "in.ndjson", "--out", "out", "--workers", "1", "--base-url", "https://x.example.org"],
                 tmp_path)
    assert audit.returncode == 0, audit.stderr
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.ndjson").read_text().splitlines()]
    assert {e["line"] for e in errors} == {2, 3}
    assert all(e["reason"].startswith("malformed JSON: ") for e in errors)
    assert not any("fatal" in e["reason"].lower() for e in errors), errors
