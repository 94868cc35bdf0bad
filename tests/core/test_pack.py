"""The bundled pack and the loader's located errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from builders import ROOT

from ccsvi_cds.rulepack import PackError, load_pack
from ccsvi_cds.rulepack.compiler import compile_rules

DOSSIER = Path(__file__).parent / "fixtures" / "evidence-dossier.md"  # a copy of the dossier's evidence rows
PUBLIC_RULE_IDS = {"venous-angioplasty-ms", "venous-stent-ms", "ccsvi-trial", "repeat-venous-procedure"}


def test_bundled_pack_has_exactly_the_public_rule_ids(pack):
    assert {r.id for r in pack.rules} == PUBLIC_RULE_IDS
    assert {r.id: r.indicator for r in pack.rules} == {
        "venous-angioplasty-ms": "warning", "venous-stent-ms": "critical", "ccsvi-trial": "info",
        "repeat-venous-procedure": "warning"}


def test_every_summary_is_under_140_characters(pack):
    assert all(len(r.card.summary) < 140 for r in pack.rules)


def test_every_identifier_in_the_evidence_library_is_verified_in_the_dossier(pack):
    """Never a PMID or DOI the dossier does not list as verified."""
    dossier = DOSSIER.read_text()
    for citation in pack.evidence.values():
        row = next((line for line in dossier.splitlines() if line.startswith(f"| {citation.id} ")), None)
        assert row is not None, f"{citation.id} is not in the dossier"
        cells = [c.strip().removeprefix("PMID ").removeprefix("DOI ") for c in row.split("|")]
        if citation.pmid:
            assert citation.pmid in cells, f"{citation.id}: PMID {citation.pmid} is not verified in the dossier"
        if citation.doi:
            assert citation.doi in cells, f"{citation.id}: DOI {citation.doi} is not verified in the dossier"


def test_pack_digest_changes_with_content(tmp_path: Path, pack):
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    assert load_pack(copy).digest == pack.digest
    rule = copy / "ccsvi-trial.yaml"
    rule.write_text(rule.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    assert load_pack(copy).digest != pack.digest


def test_compiled_rules_are_plain_json(pack):
    import json

    compiled = compile_rules(pack.rules)
    assert json.loads(json.dumps(compiled)) == compiled
    assert {name.split("#")[0] for name in compiled} == PUBLIC_RULE_IDS


def _broken(tmp_path: Path, name: str, old: str, new: str) -> PackError:
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    path = copy / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PackError) as info:
        load_pack(copy)
    return info.value


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_field_is_located(tmp_path):
    err = _broken(tmp_path, "venous-stent-ms.yaml", "indicator: critical", "indicator: critical\nseverity: high")
    problem = err.problems[0]
    assert problem.file.endswith("venous-stent-ms.yaml")
    assert problem.line == _line_of(tmp_path / "rules" / "venous-stent-ms.yaml", "severity: high")
    assert problem.column == 1 and "unknown field 'severity'" in problem.message


def test_bad_indicator_is_located_with_a_hint(tmp_path):
    err = _broken(tmp_path, "venous-stent-ms.yaml", "indicator: critical", "indicator: severe")
    p = err.problems[0]
    assert p.line == _line_of(tmp_path / "rules" / "venous-stent-ms.yaml", "indicator: severe")
    assert "'severe' is not allowed" in p.message and "info" in p.hint


def test_unknown_fact_value_is_located(tmp_path):
    err = _broken(tmp_path, "ccsvi-trial.yaml", "trial: [approved]", "trial: [aproved]")
    assert "'aproved' is not a value of order.trial" in err.problems[0].message
    assert err.problems[0].line == _line_of(tmp_path / "rules" / "ccsvi-trial.yaml", "trial: [aproved]")


def test_yaml_syntax_error_is_located(tmp_path):
    err = _broken(tmp_path, "ccsvi-trial.yaml", "indicator: info", "indicator: [info")
    assert "not valid YAML" in err.problems[0].message and err.problems[0].line > 1


def test_loader_error_message_lists_file_line_column(tmp_path):
    err = _broken(tmp_path, "ccsvi-trial.yaml", "evidence: [cochrane-2019", "evidence: [cochrane-2020")
    assert re.search(r"ccsvi-trial\.yaml:\d+:\d+: error: unknown evidence id 'cochrane-2020'", str(err))
