"""Test cases beside the rules (rules/cases/<rule-id>.yaml): their format, loading and running.

A case is an input (a CDS Hooks request or FHIR resources, inline or in a JSON file) and the cards the pack
must answer with. Cases run through `Evaluator.evaluate`, the same call the service makes, so a passing case
is a statement about the service's behaviour, not about a copy of the logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.rulepack.loader import RulePack, _validate
from ccsvi_cds.rulepack.model import ID_PATTERN, Indicator
from ccsvi_cds.rulepack.source import Problem, SourceDoc, SourceError, read_doc

CASES_DIR = "cases"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseInput(_Strict):
    """Exactly one of: a JSON file, an inline CDS Hooks request, inline FHIR resources."""

    file: str | None = Field(default=None, description="JSON file relative to this case file: a CDS Hooks "
                                                       "request, a FHIR resource or a Bundle")
    request: dict[str, Any] | None = Field(default=None, description="an inline CDS Hooks request "
                                                                    "(hook, context, prefetch)")
    resources: list[dict[str, Any]] | None = Field(default=None, description="inline FHIR resources; every "
                                                                            "ServiceRequest is evaluated")

    @model_validator(mode="after")
    def _exactly_one(self) -> CaseInput:
        given = [k for k in ("file", "request", "resources") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file, request, resources (got {', '.join(given) or 'none'})")
        return self


class ExpectedCard(_Strict):
    rule: str = Field(pattern=ID_PATTERN, description="rule id (the card's source.topic.code)")
    indicator: Indicator
    order: str | None = Field(default=None, description="the targeted order, 'ServiceRequest/<id>'; "
                                                        "omit to accept any order")
    detail_includes: list[str] = Field(default_factory=list,
                                       description="texts the rendered detail must contain")


class Expect(_Strict):
    cards: list[ExpectedCard] = Field(description="every card the pack answers with, in any order; [] = silent")
    issues: int = Field(default=0, ge=0, description="how many input issues (skipped malformed data) to expect")


class Case(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    input: CaseInput
    expect: Expect


class CaseFile(_Strict):
    """rules/cases/<rule-id>.yaml: the cases written for one rule (firing and silent ones)."""

    rule: str = Field(pattern=ID_PATTERN, description="the rule these cases are written for")
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedCase:
    file: str  # as displayed
    index: int
    rule: str  # the rule of the file the case is in
    case: Case
    line: int
    column: int
    base: Path  # folder that input.file is relative to

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def case_files(root: Path) -> list[Path]:
    folder = root / CASES_DIR
    try:
        return sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    except OSError:  # unreadable folder: reported by load_cases as missing cases
        return []


def load_cases(root: Path | str, pack: RulePack | None) -> tuple[list[LoadedCase], list[Problem]]:
    """Every case under root/cases, and each problem with its file:line:column (cross-checked with `pack`).

    A pack without cases (e.g. deployed without its cases folder) is a warning: nothing shows its rules work,
    but nothing in it is wrong either. (Hot reload does not let case problems block a pack: see reload.py.)
    """
    root = Path(root)
    loaded: list[LoadedCase] = []
    problems: list[Problem] = []
    files = case_files(root)
    if not files:
        problems.append(Problem(str(root / CASES_DIR), 1, 1, "no test cases: the folder is missing or empty",
                                f"add {CASES_DIR}/<rule-id>.yaml files (see README, Writing rules)", "warning"))
    for path in files:
        try:
            doc = read_doc(path, str(path))
        except SourceError as exc:
            problems.append(exc.problem)
            continue
        parsed: CaseFile | None = _validate(doc, CaseFile, (), problems)
        if parsed is None:
            continue
        problems.extend(_check_file(parsed, doc, pack))
        for i, case in enumerate(parsed.cases):
            line, col = doc.locate(("cases", i))
            loaded.append(LoadedCase(str(path), i, parsed.rule, case, line, col, path.parent))
    return loaded, problems


def _check_file(parsed: CaseFile, doc: SourceDoc, pack: RulePack | None) -> list[Problem]:
    problems: list[Problem] = []
    if doc.path.stem != parsed.rule:
        problems.append(doc.problem(("rule",), f"case file for '{parsed.rule}' is named '{doc.path.name}'",
                                    f"rename it to {parsed.rule}.yaml", severity="warning"))
    rules = {r.id: r for r in pack.rules} if pack is not None else None
    if rules is not None and parsed.rule not in rules:
        problems.append(doc.problem(("rule",), f"unknown rule id '{parsed.rule}'",
                                    f"use one of: {', '.join(sorted(rules))}"))
    names: dict[str, int] = {}
    for i, case in enumerate(parsed.cases):
        if case.name in names:
            problems.append(doc.problem(("cases", i, "name"), f"duplicate case name '{case.name}'",
                                        "give each case its own name"))
        names[case.name] = i
        if case.input.file is not None and not (doc.path.parent / case.input.file).is_file():
            problems.append(doc.problem(("cases", i, "input", "file"), f"input file not found: {case.input.file}",
                                        f"the path is relative to {doc.path.parent}"))
        for j, card in enumerate(case.expect.cards):
            if rules is None:
                continue
            loc = ("cases", i, "expect", "cards", j)
            rule = rules.get(card.rule)
            if rule is None:
                problems.append(doc.problem(loc + ("rule",), f"unknown rule id '{card.rule}'",
                                            f"use one of: {', '.join(sorted(rules))}"))
            elif rule.indicator != card.indicator:
                problems.append(doc.problem(loc + ("indicator",),
                                            f"rule '{card.rule}' has indicator '{rule.indicator}', "
                                            f"the case expects '{card.indicator}'",
                                            f"expect '{rule.indicator}' or change the rule"))
    return problems


# --- running ------------------------------------------------------------------------------------------


CardKey = tuple[str, str, str]  # (rule id, indicator, order ref)


@dataclass
class CaseResult:
    case: LoadedCase
    actual: list[CardKey] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)  # "  ", "- ", "+ " lines
    notes: list[str] = field(default_factory=list)  # further reasons for failure
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.notes and not any(d[0] in "-+" for d in self.diff)

    @property
    def fired(self) -> set[str]:
        return {rule for rule, _, _ in self.actual}


@dataclass
class CaseReport:
    results: list[CaseResult]
    rule_ids: list[str]

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def never_fired(self) -> list[str]:
        fired = set().union(*(r.fired for r in self.results)) if self.results else set()
        return [rid for rid in self.rule_ids if rid not in fired]

    @property
    def without_silent_case(self) -> list[str]:
        """Rules none of whose own cases leaves them silent: nothing shows where the rule stops."""
        silent = {r.case.rule for r in self.results if r.error is None and r.case.rule not in r.fired}
        return [rid for rid in self.rule_ids if rid not in silent]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.never_fired and not self.without_silent_case


def _fmt(key: CardKey) -> str:
    rule, indicator, order = key
    return f"{indicator:<9} {rule:<28} {order}"


def _compare(expected: Sequence[Any], actual: list[tuple[CardKey, str]]) -> tuple[list[str], list[str]]:
    """(diff lines, notes): expected vs actual cards as a multiset; wildcard orders match any order."""
    remaining = list(range(len(actual)))
    pairs: list[tuple[Any, int | None]] = []
    for exact_pass in (True, False):
        for card in expected:
            if any(c is card for c, _ in pairs) or (exact_pass and card.order is None):
                continue
            hit = next((k for k in remaining if actual[k][0][0] == card.rule and actual[k][0][1] == card.indicator
                        and (card.order is None or actual[k][0][2] == card.order)), None)
            if hit is not None:
                remaining.remove(hit)
                pairs.append((card, hit))
    matched = {id(c) for c, _ in pairs}
    lines: list[tuple[tuple[str, str, str], str]] = []
    notes: list[str] = []
    for card, k in pairs:
        assert k is not None
        key, detail = actual[k]
        lines.append((key, "  " + _fmt(key)))
        for text in card.detail_includes:
            if text not in detail:
                notes.append(f"detail of {key[0]} on {key[2]} does not contain {text!r}")
    for card in expected:
        if id(card) not in matched:
            key = (card.rule, card.indicator, card.order or "(any order)")
            lines.append((key, "- " + _fmt(key)))
    for k in remaining:
        lines.append((actual[k][0], "+ " + _fmt(actual[k][0])))
    lines.sort(key=lambda item: (item[0][2], item[0][0], item[1][0]))
    return [text for _, text in lines], notes


def run_case(evaluator: Evaluator, loaded: LoadedCase) -> CaseResult:
    result = CaseResult(loaded)
    spec = loaded.case.input
    try:
        if spec.file is not None:
            path = loaded.base / spec.file
            evaluation = evaluator.evaluate_document(orjson.loads(path.read_bytes()), str(path))
        elif spec.request is not None:
            evaluation = evaluator.evaluate_document(spec.request, "request")
        else:
            evaluation = evaluator.evaluate_document(spec.resources, "resources")
    except (OSError, orjson.JSONDecodeError) as exc:
        result.error = f"cannot read the input: {exc}"
        return result
    except Exception as exc:  # noqa: BLE001 - a malformed input fails its case, never the whole run
        result.error = f"cannot evaluate the input: {type(exc).__name__}: {exc}"[:300]
        return result
    actual = [((f.rule_id, f.indicator, f.order_ref), str(f.card.get("detail", ""))) for f in evaluation.findings]
    result.actual = [key for key, _ in actual]
    result.diff, result.notes = _compare(loaded.case.expect.cards, actual)
    result.notes += [f"card failed to render (left out): {e}" for e in evaluation.card_errors]
    if len(evaluation.issues) != loaded.case.expect.issues:
        result.notes.append(f"expected {loaded.case.expect.issues} input issue(s), got {len(evaluation.issues)}"
                            + "".join(f"\n    {issue}" for issue in evaluation.issues))
    return result


def run_cases(pack: RulePack, cases: Sequence[LoadedCase], evaluator: Evaluator | None = None) -> CaseReport:
    evaluator = evaluator or Evaluator(pack)
    return CaseReport([run_case(evaluator, c) for c in cases], [r.id for r in pack.rules])


def format_report(report: CaseReport, verbose: bool = False) -> str:
    """Human-readable: a diff per failing case, then coverage (never fired, no silent case)."""
    out: list[str] = []
    for r in report.results:
        title = f"{r.case.where} [{r.case.rule}] {r.case.case.name}"
        if r.passed:
            if verbose:
                out.append(f"ok   {title}")
            continue
        out.append(f"FAIL {title}")
        if r.error:
            out.append(f"     {r.error}")
            continue
        if any(d[0] in "-+" for d in r.diff):
            out.append("     cards differ (- expected, + actual):")
            out.extend(f"       {d}" for d in r.diff or ["  (no cards)"])
        out.extend(f"     {note}" for note in r.notes)
    passed = len(report.results) - len(report.failures)
    out.append(f"{passed} passed, {len(report.failures)} failed, {len(report.results)} case(s)")
    for rid in report.never_fired:
        out.append(f"never fired: {rid} (no case makes this rule fire: add a firing case to cases/{rid}.yaml)")
    for rid in report.without_silent_case:
        out.append(f"no silent case: {rid} (add a near-miss case to cases/{rid}.yaml in which it stays silent)")
    return "\n".join(out)


def is_case_problem(problem: Problem, root: Path) -> bool:
    """A problem in the test cases (a case file or its input), not in what the service would run."""
    cases = Path(root) / CASES_DIR
    return Path(problem.file) == cases or Path(problem.file).parent == cases
