"""detectedissues.ndjson: one valid FHIR R4 DetectedIssue per finding, built from the finding lines (issue 12.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from audit_data import read_ndjson
from fhir.resources.R4B.detectedissue import DetectedIssue

from ccsvi_cds.audit.detectedissue import FINDING_SYSTEM, RULE_SYSTEM, detected_issue
from ccsvi_cds.audit.outputs import sha256_file
from ccsvi_cds.audit.run import AuditOptions, run_audit

SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, rules_dir: Path, small_export: Path) -> Path:
    out = tmp_path_factory.mktemp("audit") / "out"
    run_audit(AuditOptions([str(small_export)], out, rules_dir, workers=2))
    return out


def test_one_valid_detected_issue_per_finding(audited: Path) -> None:
    findings = read_ndjson(audited / "findings.ndjson")
    issues = read_ndjson(audited / "detectedissues.ndjson")
    assert len(findings) >= 3 and len(issues) == len(findings)
    assert len({i["id"] for i in issues}) == len(issues)
    with_mitigation = 0
    for finding, issue in zip(findings, issues, strict=True):
        DetectedIssue.model_validate(issue)  # raises on anything FHIR R4 does not allow
        assert issue["status"] == "final"
        assert issue["severity"] == SEVERITY[finding["indicator"]]
        assert issue["implicated"] == [{"reference": finding["serviceRequest"]}]
        assert issue["patient"] == {"reference": finding["patient"]}
        assert issue["detail"] == finding["summary"]
        assert issue["identifier"] == [{"system": FINDING_SYSTEM,
                                        "value": f"{finding['rule']}|{finding['serviceRequest']}"}]
        assert issue["code"]["coding"] == [{"system": RULE_SYSTEM, "code": finding["rule"]}]
        facts = {f["ref"] for f in finding["matched"].values() if f.get("ref")} - {finding["serviceRequest"]}
        evidence = {d["reference"] for e in issue.get("evidence", []) for d in e["detail"]}
        assert evidence == facts and evidence, "the facts that fired the rule are the evidence"
        labels = [s["label"] for s in finding["card"].get("suggestions", [])]
        assert [m["action"]["text"] for m in issue.get("mitigation", [])] == labels
        with_mitigation += bool(labels)
    assert with_mitigation, "the generated export must give a finding whose card has a suggestion"


def test_detected_issues_are_listed_in_the_summary(audited: Path) -> None:
    import orjson

    summary = orjson.loads((audited / "summary.json").read_bytes())
    assert summary["outputs"]["detectedissues.ndjson"] == sha256_file(audited / "detectedissues.ndjson")


def test_a_finding_without_suggestion_or_facts_still_gives_a_valid_issue() -> None:
    finding: dict[str, Any] = {"rule": "r-1", "serviceRequest": "ServiceRequest/sr.1", "patient": "Patient/p1",
                               "indicator": "info", "summary": "Check this order", "matched": {},
                               "card": {"summary": "Check this order"}}
    issue = detected_issue(finding)
    DetectedIssue.model_validate(issue)
    assert issue["severity"] == "low" and "mitigation" not in issue and "evidence" not in issue
    assert detected_issue(finding)["id"] == issue["id"]  # the same finding, the same id in every audit
