"""`rules lint`: expansions agree with their compose; card figures occur in the evidence they cite."""

# ruff: noqa: F811  (pack_dir is a pytest fixture imported from pack_helpers, then taken as a parameter)

from __future__ import annotations

import json
from pathlib import Path

from pack_helpers import edit, pack_dir, position  # noqa: F401 - pack_dir is a fixture

from ccsvi_cds.authoring.lint import lint_pack
from ccsvi_cds.authoring.valueset_check import enumerate_pattern
from ccsvi_cds.rulepack.source import Problem


def only(problems: list[Problem], fragment: str) -> Problem:
    hits = [p for p in problems if fragment in p.message]
    assert len(hits) == 1, f"{fragment!r}: {[str(p) for p in problems]}"
    assert hits[0].hint, f"no fix given: {hits[0]}"
    return hits[0]


def lint(pack_dir: Path) -> list[Problem]:
    return lint_pack(pack_dir, run_case_inputs=False).problems


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_enumerates_character_patterns_only() -> None:
    assert enumerate_pattern("057[MN][03]ZZ") == ["057M0ZZ", "057M3ZZ", "057N0ZZ", "057N3ZZ"]
    assert enumerate_pattern("^06[A-C]$") == ["06A", "06B", "06C"]
    assert enumerate_pattern("057.ZZ") is None
    assert enumerate_pattern("G35(\\.[A-D])?") is None


def test_bundled_value_sets_agree_with_their_compose(pack_dir: Path) -> None:
    problems = [p for p in lint(pack_dir) if "/valuesets/" in p.file]
    assert problems == [], [str(p) for p in problems]


def test_expansion_missing_a_code_the_pcs_pattern_generates(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "cerebrospinal-outflow-veins.json"

    def drop(data: dict) -> None:  # type: ignore[type-arg]
        data["expansion"]["contains"] = [c for c in data["expansion"]["contains"] if c["code"] != "057N0ZZ"]
        data["expansion"]["total"] -= 1

    _rewrite(vs, drop)
    p = only(lint(pack_dir), "the expansion lacks 1 code(s) the pattern")
    assert "057N0ZZ" in p.message and p.severity == "error"
    assert (p.file, p.line) == (str(vs), position(vs, '057[01MNRS]')[0])


def test_expansion_code_outside_the_compose(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "multiple-sclerosis.json"

    def add(data: dict) -> None:  # type: ignore[type-arg]
        data["expansion"]["contains"].append({"system": "http://id.who.int/icd/release/11/mms", "code": "8A41",
                                              "display": "Clinically isolated syndrome"})
        data["expansion"]["total"] += 1

    _rewrite(vs, add)
    p = only(lint(pack_dir), "8A41 (http://id.who.int/icd/release/11/mms) is in the expansion but not in the compose")
    assert (p.file, p.line) == (str(vs), position(vs, '"8A41"')[0])


def test_listed_concept_missing_from_the_expansion_and_wrong_total(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "arteries.json"

    def drop(data: dict) -> None:  # type: ignore[type-arg]
        data["expansion"]["contains"] = []
        data["expansion"]["contains"].append({"system": "http://snomed.info/sct", "code": "69105007"})
        data["compose"]["include"][0]["concept"].append({"code": "12345678"})

    _rewrite(vs, drop)
    problems = lint(pack_dir)
    p = only(problems, "compose lists 12345678 but the expansion does not")
    assert (p.file, p.line) == (str(vs), position(vs, '"12345678"')[0])


def test_total_disagreeing_with_the_codes(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "dialysis-circuit-procedures.json"
    _rewrite(vs, lambda data: data["expansion"].update(total=7))
    p = only(lint(pack_dir), "expansion.total is 7 but 3 codes are listed")
    assert (p.file, p.line) == (str(vs), position(vs, '"total"')[0])


def test_spelling_of_systems_and_codes_does_not_matter(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "ms-relapsing-remitting.json"

    def respell(data: dict) -> None:  # type: ignore[type-arg]
        data["expansion"]["contains"][1].update(system="urn:oid:2.16.840.1.113883.6.90", code="g35a")

    _rewrite(vs, respell)
    problems = lint(pack_dir)
    assert [p for p in problems if "compose" in p.message or "expansion" in p.message] == []
    only(problems, "unknown system 'urn:oid:2.16.840.1.113883.6.90'")  # lint still asks for the canonical URI


def test_is_a_filter_whose_own_concept_is_not_listed(pack_dir: Path) -> None:
    vs = pack_dir / "valuesets" / "multiple-sclerosis.json"

    def drop(data: dict) -> None:  # type: ignore[type-arg]
        data["expansion"]["contains"] = [c for c in data["expansion"]["contains"] if c["code"] != "8A40"]
        data["expansion"]["total"] -= 1

    _rewrite(vs, drop)
    only(lint(pack_dir), "the expansion lacks 8A40, the concept this is-a filter names")


def test_figure_not_in_the_cited_evidence_is_a_warning(pack_dir: Path) -> None:
    rule = pack_dir / "repeat-venous-procedure.yaml"
    edit(rule, "patients (47%) within 18 months", "patients (74%) within 18 months")
    p = only(lint(pack_dir), "'74%' does not occur in the result of the evidence cited for it (zamboni-2009)")
    assert p.severity == "warning"
    assert (p.file, p.line, p.column) == (str(rule), *position(rule, "74%"))


def test_figure_cited_to_the_wrong_trial(pack_dir: Path) -> None:
    rule = pack_dir / "venous-stent-ms.yaml"
    edit(rule, "10% vs 2% after sham {{ cite('traboulsee-2018') }}", "10% vs 2% after sham {{ cite('zamboni-2018') }}")
    problems = lint(pack_dir)
    assert only(problems, "'10%' does not occur").line == position(rule, "10% vs 2%")[0]
    only(problems, "'2%' does not occur")


def test_p_values_are_checked_and_spelled_freely(pack_dir: Path) -> None:
    rule = pack_dir / "venous-angioplasty-ms.yaml"
    edit(rule, "p=0.062;", "P = .062;")
    assert [p for p in lint(pack_dir) if "does not occur" in p.message] == []
    edit(rule, "p=0.389)", "p=0.039)")
    only(lint(pack_dir), "'p=0.039' does not occur in the result of the evidence cited for it (siddiqui-2014)")


def test_figure_in_a_summary_is_checked_against_the_cards_evidence(pack_dir: Path) -> None:
    rule = pack_dir / "repeat-venous-procedure.yaml"
    edit(rule, "narrowed again in about half of patients, and", "narrowed again in 60% of patients, and")
    p = only(lint(pack_dir), "'60%' does not occur")
    assert (p.file, p.line) == (str(rule), position(rule, "60%")[0])
