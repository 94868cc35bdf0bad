"""Render every card of every rule before a pack is accepted (`rules lint`, hot reload).

The static template check sees names and fields; what only shows with data (`{{ order.study_title | length }}`
when there is no study) needs rendering. Each rule's card is built, with the strict template environment
(undefined names raise), against:
- every rule case's facts, wherever the rule's patterns hold for them (the facts come from the same facts
  layer the Evaluator uses; patterns are matched here, per fact and per patient, without the rule engine, so
  this check may run off the service's event-loop thread, where no engine may be built);
- synthetic facts for each `when` alternative and each `any` branch: once with every optional field absent,
  and once per value position with every field present (so each value of each field is seen at least once).
Each failure is an error at the template's file:line:column, reported once per rule and position.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from jinja2.sandbox import SandboxedEnvironment

from ccsvi_cds.authoring.cases import LoadedCase, is_case_problem
from ccsvi_cds.authoring.template_check import _position
from ccsvi_cds.cards import CardBuilder, CardRenderError
from ccsvi_cds.evaluate import DEFAULT_BASE_URL
from ccsvi_cds.facts.classify import compile_classifiers
from ccsvi_cds.facts.extract import Projector
from ccsvi_cds.facts.records import read_document
from ccsvi_cds.facts.requirements import data_requirements
from ccsvi_cds.facts.schema import DISPLAY_ONLY, MATCHABLE
from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import FactPattern, Rule, Where
from ccsvi_cds.rulepack.source import Problem, SourceDoc

Facts = dict[str, Any]
Context = dict[str, Facts]
MAX_BINDINGS = 200  # per case and alternative: enough for any realistic case, bounded for a hostile one
RESOURCE_TYPE = {"order": "ServiceRequest", "patient": "Patient", "procedure": "Procedure"}
HINT = ("guard optional fields, e.g. {% if order.study_title %}...{% endif %} or "
        "{{ order.study_title | default('', true) }}")


def check_rendering(pack: RulePack, cases: list[LoadedCase], found: list[Problem]) -> list[Problem]:
    """Errors for every card that fails to build against the cases' facts or the synthetic facts.

    Skipped while the rules themselves have errors (`found`; the static checks say it better); problems in
    the case files do not stop it (a case with a missing input is merely not rendered against).
    """
    if any(p.severity == "error" and not is_case_problem(p, pack.root) for p in found):
        return []
    builder = CardBuilder(pack, DEFAULT_BASE_URL, strict=True)
    projector = Projector(compile_classifiers(pack), pack.manifest.trial, pack.manifest.records)
    case_facts = [(c, _case_groups(pack, projector, c)) for c in cases]
    problems: list[Problem] = []
    for rule in pack.rules:
        doc = pack.rule_files.get(rule.id)
        if doc is None:
            continue
        contexts: Iterator[tuple[str, Context]] = itertools.chain(
            ((f"with case '{c.case.name}' ({c.where})", ctx)
             for c, groups in case_facts for facts in groups for ctx in _bindings(rule, facts)),
            _synthetic(pack, rule))
        seen: set[tuple[int, int, str]] = set()
        for label, context in contexts:
            try:
                builder.build(rule, context, context)
            except CardRenderError as exc:
                problem = _locate(doc, rule, builder.env, exc, context, label)
                key = (problem.line, problem.column, exc.message)
                if key not in seen:
                    seen.add(key)
                    problems.append(problem)
    return problems


# --- the cases' facts ---------------------------------------------------------------------------------


def _read_input(case: LoadedCase) -> tuple[Any, str] | None:
    spec = case.case.input
    if spec.file is not None:
        path = case.base / spec.file
        try:
            return orjson.loads(Path(path).read_bytes()), str(path)
        except (OSError, orjson.JSONDecodeError):
            return None  # reported by the case checks (not found) and by `rules test` (unreadable)
    if spec.request is not None:
        return spec.request, "request"
    return spec.resources, "resources"


def _case_groups(pack: RulePack, projector: Projector, case: LoadedCase) -> list[list[Facts]]:
    """The facts of each patient in the case's input, as `Evaluator.evaluate` projects them; none for an input
    that cannot be read (running the case, `rules test` or lint's coverage check, reports it)."""
    try:
        return _project(pack, projector, case)
    except Exception:  # noqa: BLE001 - a hostile case input must not crash the check of the templates
        return []


def _project(pack: RulePack, projector: Projector, case: LoadedCase) -> list[list[Facts]]:
    read = _read_input(case)
    if read is None:
        return []
    records = read_document(*read, data_requirements(pack).types)
    out = []
    for group in records.patients.values():
        projected = projector.project(records, group, [])
        if projected.orders:
            out.append(projected.facts)
    return out


def _holds(fact: Facts, where: Where) -> bool:
    return all(fact.get(name) in values for name, values in where.items())


def _matches(fact: Facts, pattern: FactPattern) -> bool:
    return (fact.get("kind") == pattern.fact and _holds(fact, pattern.where)
            and (not pattern.any or any(_holds(fact, w) for w in pattern.any)))


def _context(rule: Rule, bound: Mapping[str, Facts], patient: Facts) -> Context:
    return {**bound, "order": bound[rule.order], "patient": patient}


def _bindings(rule: Rule, facts: list[Facts]) -> Iterator[Context]:
    """Every way the rule's aliases bind to one patient's facts (as the engine would fire it), bounded."""
    patient = next((f for f in facts if f.get("kind") == "patient"), None)
    if patient is None:
        return
    for alternative in rule.when:
        aliases = sorted(alternative)
        options = [[f for f in facts if _matches(f, alternative[a])] for a in aliases]
        for combo in itertools.islice(itertools.product(*options), MAX_BINDINGS):
            yield _context(rule, dict(zip(aliases, combo, strict=True)), patient)


# --- synthetic facts ----------------------------------------------------------------------------------


def _domain(pack: RulePack, kind: str, name: str) -> tuple[str, ...] | None:
    """The values a field always takes one of (classifier values, fixed values); None = free or optional."""
    spec = MATCHABLE[kind].get(name)
    if isinstance(spec, str):
        classifier = next((c for name_, c in pack.manifest.classifiers.items() if name_ == spec), None)
        if classifier is None:
            return None
        return tuple(dict.fromkeys([v.value for v in classifier.values] + [classifier.default]))
    return spec


def _fact(pack: RulePack, kind: str, where: Where, position: int | None) -> Facts:
    """A fact of `kind` satisfying `where`: position None = optional fields absent; else every field present,
    each field taking the value at `position` (modulo) of what it may be."""
    fact: Facts = {"kind": kind, "ref": f"{RESOURCE_TYPE[kind]}/example"}
    for name in (*MATCHABLE[kind], *DISPLAY_ONLY[kind]):
        if name == "ref":
            continue
        allowed = where.get(name) or _domain(pack, kind, name)
        if allowed:
            fact[name] = allowed[(position or 0) % len(allowed)]
        else:
            fact[name] = None if position is None else f"example {name.replace('_', ' ')}"
    return fact


def _synthetic(pack: RulePack, rule: Rule) -> Iterator[tuple[str, Context]]:
    widest = max([len(_domain(pack, kind, name) or ()) for kind in MATCHABLE for name in MATCHABLE[kind]] + [1])
    for i, alternative in enumerate(rule.when):
        aliases = sorted(alternative)
        branches = [[{**p.where, **w} for w in p.any] or [dict(p.where)]
                    for p in (alternative[a] for a in aliases)]
        for combo in itertools.islice(itertools.product(*branches), MAX_BINDINGS):
            for position in (None, *range(widest)):
                bound = {a: _fact(pack, alternative[a].fact, where, position)
                         for a, where in zip(aliases, combo, strict=True)}
                patient = next((f for f in bound.values() if f["kind"] == "patient"), None)
                what = "optional fields absent" if position is None else f"every field present (values #{position + 1})"
                yield (f"for when[{i}] with {what}",
                       _context(rule, bound, patient or _fact(pack, "patient", {}, position)))


# --- where in the file --------------------------------------------------------------------------------


_SEGMENT = re.compile(r"\{\{-?(.*?)-?\}\}|\{%-?\s*(?:if|elif)\s+(.*?)-?%\}")


def _culprit(env: SandboxedEnvironment, text: str, context: Context) -> str | None:
    """The `{{ }}` / `{% if %}` segment on a template line that fails on its own with `context`."""
    for m in _SEGMENT.finditer(text):
        expression = m.group(1) if m.group(1) is not None else m.group(2)
        try:
            str(env.compile_expression(expression, undefined_to_none=False)(**context))
        except Exception:  # noqa: BLE001 - this segment is the one that fails
            return m.group(0)
    return None


def _locate(doc: SourceDoc, rule: Rule, env: SandboxedEnvironment, exc: CardRenderError, context: Context,
            label: str) -> Problem:
    message = f"the card of rule '{rule.id}' fails to render {label}: {exc.message}"
    loc: tuple[object, ...] = ("card", "detail")
    if exc.template_line is None:
        line, col = doc.locate(loc)
        return Problem(doc.display, line, col, message, HINT)
    lines = doc.path.read_text(encoding="utf-8").splitlines()
    template_lines = rule.card.detail.splitlines()
    text = template_lines[exc.template_line - 1] if 0 < exc.template_line <= len(template_lines) else ""
    token = _culprit(env, text, context) or text.strip()
    line, col = _position(doc, loc, exc.template_line, token, lines)
    return Problem(doc.display, line, col, message, HINT)
