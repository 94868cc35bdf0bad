"""JSON Schemas of the pack format, generated from the pydantic models (never written by hand).

Editors validate while typing through the `# yaml-language-server: $schema=...` line at the top of each file;
a test checks that the committed schema/*.json equal what these models generate, so they cannot drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from ccsvi_cds.authoring.cases import CaseFile
from ccsvi_cds.rulepack.model import Citation, PackManifest, Rule

BASE_ID = "urn:ccsvi-cds:schema:"


def schema_dir(rules_dir: Path) -> Path:
    """Where a pack's schemas go: beside the rules folder, where each file's `$schema` line points
    (`../schema/<kind>.schema.json`)."""
    return rules_dir.resolve().parent / "schema"


def _schema(name: str, title: str, generated: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{BASE_ID}{name}",
            **generated, "title": title}


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every file kind of a pack."""
    def of(model: type[BaseModel]) -> dict[str, Any]:
        return model.model_json_schema(mode="validation")

    return {
        "rule.schema.json": _schema("rule", "ccsvi-cds rule (one rules/<id>.yaml)", of(Rule)),
        "pack.schema.json": _schema("pack", "ccsvi-cds rule pack manifest (rules/pack.yaml)", of(PackManifest)),
        "evidence.schema.json": _schema("evidence", "ccsvi-cds evidence library (rules/evidence.yaml)",
                                        TypeAdapter(list[Citation]).json_schema(mode="validation")),
        "cases.schema.json": _schema("cases", "ccsvi-cds rule test cases (rules/cases/<rule-id>.yaml)",
                                     of(CaseFile)),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out_dir / name
        text = render(schema)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(out_dir: Path) -> list[str]:
    """Names of committed schema files that differ from the generated ones (or are missing)."""
    stale = []
    for name, schema in schemas().items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(name)
    return stale
