"""`rules diff`: the same records through two pack versions; only the decisions that change are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from pack_helpers import REPO, edit

from ccsvi_cds.authoring.cli import rules
from ccsvi_cds.authoring.diff import diff_packs
from ccsvi_cds.rulepack import load_pack

EXAMPLES = str(REPO / "fhir_examples")


def _new_version(tmp_path: Path) -> Path:
    """The stent rule widened to any vein named in the order for MS patients (an edit with side effects)."""
    new = tmp_path / "new"
    shutil.copytree(REPO / "rules", new)
    edit(new / "venous-stent-ms.yaml", "      any:\n        - {site: [outflow]}\n",
         "      any:\n        - {site: [outflow, other-vein]}\n")
    edit(new / "pack.yaml", "version: 1.0.0", "version: 1.1.0")
    return new


RECORDS = ["cds-hooks-order-select-stent.json", "cds-hooks-order-sign.json", "cds-hooks-order-select-unrelated.json",
           "negative-iliac-vein-stent.json", "positive-stent-azygos-spms.json", "negative-carotid-angioplasty.json"]


def test_diff_reports_the_changed_decision(tmp_path: Path) -> None:
    new = _new_version(tmp_path)
    records = tmp_path / "records"
    records.mkdir()
    for name in RECORDS:
        shutil.copy(REPO / "fhir_examples" / name, records / name)
    result = CliRunner().invoke(rules, ["diff", "--old", str(REPO / "rules"), "--new", str(new), str(records)])
    assert result.exit_code == 0, result.output
    old_pack, new_pack = load_pack(REPO / "rules"), load_pack(new)
    assert result.output.splitlines() == [
        f"old: ccsvi 1.0.0 ({old_pack.digest[:12]})",
        f"new: ccsvi 1.1.0 ({new_pack.digest[:12]})",
        "replayed 3 CDS Hooks request(s) and 9 FHIR resource(s) from 3 file(s); orders evaluated: 8 old, 8 new",
        "decisions changed: 1 order(s)",
        f"  {records}/negative-iliac-vein-stent.json: ServiceRequest/sr-2003",
        "    + critical  venous-stent-ms",
        "  venous-stent-ms: 1 added, 0 removed, 0 changed",
    ]
    failing = CliRunner().invoke(rules, ["diff", "--old", str(REPO / "rules"), "--new", str(new), "--fail-on-change",
                                         str(records)])
    assert failing.exit_code == 1


def test_same_pack_changes_nothing() -> None:
    result = CliRunner().invoke(rules, ["diff", "--old", str(REPO / "rules"), "--new", str(REPO / "rules"),
                                        "--fail-on-change", EXAMPLES])
    assert result.exit_code == 0 and "no decision changes" in result.output


def test_audit_input_and_changed_card_text(tmp_path: Path) -> None:
    """NDJSON audit input (resources of several patients across files); a reworded detail is a change."""
    export = tmp_path / "export"
    export.mkdir()
    by_type: dict[str, list[str]] = {}
    for path in sorted((REPO / "fhir_examples").glob("positive-*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            res = entry["resource"]
            by_type.setdefault(res["resourceType"], []).append(json.dumps(res))
    for rtype, lines in by_type.items():
        (export / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    new = tmp_path / "new"
    shutil.copytree(REPO / "rules", new)
    edit(new / "repeat-venous-procedure.yaml", "- **The veins narrow again:**",
         "- **Restenosis is common:**")
    old_pack, new_pack = load_pack(REPO / "rules"), load_pack(new)
    report = diff_packs(old_pack, new_pack, [str(export)])
    assert report.records.hook_requests == [] and len(report.records.fhir) > 20
    (change,) = report.changes
    assert (change.record, change.order, change.kind, change.rule) == (
        f"{export}/ServiceRequest.ndjson", "ServiceRequest/sr-1006", "changed", "repeat-venous-procedure")
    lines = change.lines()
    assert lines[0] == "~ warning   repeat-venous-procedure"
    assert any(line.startswith("    -- **The veins narrow again:**") for line in lines)
    assert any(line.startswith("    +- **Restenosis is common:**") for line in lines)
    as_json = CliRunner().invoke(rules, ["diff", "--old", str(REPO / "rules"), "--new", str(new), "--format", "json",
                                         str(export)])
    payload = json.loads(as_json.output)
    assert payload["changedOrders"] == 1 and payload["byRule"] == {"repeat-venous-procedure": {"changed": 1}}
    assert payload["new"]["digest"] == new_pack.digest


def test_unreadable_input_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(rules, ["diff", "--old", str(REPO / "rules"), "--new", str(REPO / "rules"),
                                        str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "no such file or directory" in result.output
