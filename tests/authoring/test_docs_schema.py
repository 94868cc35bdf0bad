"""`rules docs` (HTML and Markdown catalogue) and the generated JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from pack_helpers import REPO

from ccsvi_cds.authoring.cli import rules
from ccsvi_cds.authoring.schema import schema_dir, schemas, stale_schemas
from ccsvi_cds.rulepack import load_pack


def test_markdown_catalogue(tmp_path: Path) -> None:
    out = tmp_path / "catalogue.md"
    result = CliRunner().invoke(rules, ["docs", str(REPO / "rules"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    pack = load_pack(REPO / "rules")
    assert f"Digest `{pack.digest}`" in text
    for rule in pack.rules:
        assert f"## {rule.id}\n" in text and rule.card.summary in text
    # conditions in plain language, evidence with verified links, value set codes, the cases
    assert ("1. the order: procedure is a stent placement (`stent`) and trial link is no linked research study "
            "(`none`) or a linked study that is not active or approved (e.g. withdrawn) (`not-approved`); and "
            "either site is a cerebrospinal outflow vein (internal jugular, azygos, hemiazygos or vertebral vein) "
            "(`outflow`), or site is not named (no vessel given in the order) (`unspecified`) and vessel is a vein "
            "(`vein`); with the patient: has MS is yes: an MS diagnosis on record (not refuted or entered in "
            "error) (`yes`).") in text
    assert "[Siddiqui 2014, PREMiSe RCT](https://pubmed.ncbi.nlm.nih.gov/24975855/)" in text
    assert "| SNOMED CT | 12123001 | Internal jugular vein |" in text
    assert "| silent - iliac vein stent for another venous disease | ../../fhir_examples/negative-iliac-vein-stent.json | no card |" in text


def test_html_catalogue_escapes_and_links(tmp_path: Path) -> None:
    out = tmp_path / "catalogue.html"
    result = CliRunner().invoke(rules, ["docs", str(REPO / "rules"), "--out", str(out)])
    assert result.exit_code == 0
    html = out.read_text()
    assert html.startswith("<!doctype html>")
    assert '<section id="venous-stent-ms">' in html
    assert '<a href="https://pubmed.ncbi.nlm.nih.gov/29150995/">Zamboni 2018, Brave Dreams RCT</a>' in html
    assert "cite(" not in html and "{%" not in html  # cards are shown rendered, never as template source
    assert '<h3 id="vs-cerebrospinal-outflow-veins">' in html


def test_committed_schemas_are_generated_from_the_models() -> None:
    assert schema_dir(REPO / "rules") == REPO / "schema"
    assert stale_schemas(REPO / "schema") == [], "run `ccsvi-cds rules schema` and commit schema/"
    rule_schema = json.loads((REPO / "schema" / "rule.schema.json").read_text())
    assert rule_schema["properties"]["indicator"]["enum"] == ["info", "warning", "critical"]
    assert rule_schema["$defs"]["CardSpec"]["properties"]["summary"]["maxLength"] == 139
    assert set(schemas()) == {"rule.schema.json", "pack.schema.json", "evidence.schema.json", "cases.schema.json"}


def test_rule_files_point_editors_at_the_schema() -> None:
    for path in (REPO / "rules").glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        kind = "pack" if path.name == "pack.yaml" else "evidence" if path.name == "evidence.yaml" else "rule"
        if kind == "evidence":
            continue
        assert first == f"# yaml-language-server: $schema=../schema/{kind}.schema.json", path
    for path in (REPO / "rules" / "cases").glob("*.yaml"):
        assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../../schema/cases.schema.json"


def test_schema_command_writes_beside_the_rules_folder_it_is_given(tmp_path: Path) -> None:
    """A pack kept anywhere (not this checkout, not a wheel's package data) gets its schemas where its
    files' `$schema` lines point: ../schema from the rules folder."""
    pack = tmp_path / "hospital" / "rules"
    pack.mkdir(parents=True)
    result = CliRunner().invoke(rules, ["schema", str(pack)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "hospital" / "schema").iterdir()) == sorted(schemas())
    assert CliRunner().invoke(rules, ["schema", str(pack), "--check"]).exit_code == 0
    (tmp_path / "hospital" / "schema" / "rule.schema.json").write_text("{}")
    stale = CliRunner().invoke(rules, ["schema", str(pack), "--check"])
    assert stale.exit_code == 1 and "rule.schema.json" in stale.output
