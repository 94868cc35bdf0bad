"""`rules docs`: a readable catalogue of a pack (HTML or Markdown) for clinicians, reviewers and auditors.

Everything is derived from the loaded pack and its cases, so the catalogue cannot disagree with what runs:
each rule's conditions in plain language, its card, evidence with links, the classifiers and value sets
with their codes, and the test cases with what they expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ccsvi_cds.authoring.cases import load_cases
from ccsvi_cds.authoring.lint import KNOWN_SYSTEMS
from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import FactPattern, Rule, Where

FACT_NAMES = {"order": "the order", "patient": "the patient", "procedure": "a procedure on record"}
FIELD_NAMES = {"procedure": "procedure", "site": "site", "vessel": "vessel", "reason": "stated reason",
               "trial": "trial link", "status": "status", "study_status": "study status", "ms": "has MS",
               "ms_subtype": "MS subtype"}


def _values(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _clause(where: Where) -> str:
    return " and ".join(f"{FIELD_NAMES.get(f, f)} is {_values(v)}" for f, v in where.items())


def describe_pattern(alias: str, pattern: FactPattern, order_alias: str) -> str:
    """One sentence, e.g. "the order: procedure is 'stent' and trial link is 'none' or 'not-approved';
    and either site is 'outflow', or site is 'unspecified' and vessel is 'vein'"."""
    who = FACT_NAMES[pattern.fact] + ("" if alias in (order_alias, "patient") else f" (`{alias}`)")
    parts = [_clause(pattern.where)] if pattern.where else []
    if pattern.any:
        options = [_clause(w) or "anything" for w in pattern.any]
        parts.append(options[0] if len(options) == 1 else "either " + ", or ".join(options))
    return f"{who}: " + ("; and ".join(parts) if parts else "any")


def describe_condition(when: dict[str, Where]) -> str:
    """A suggestion's condition, {alias: {field: values}}, in words."""
    return " and ".join(f"{FACT_NAMES.get(alias, alias)}: {_clause(where)}" for alias, where in when.items())


@dataclass(frozen=True)
class RuleDoc:
    rule: Rule
    alternatives: list[list[str]]
    evidence: list[dict[str, Any]]
    override_reasons: list[str]
    suggestions: list[dict[str, Any]]
    links: list[dict[str, str]]
    cases: list[dict[str, Any]]


def _rule_doc(pack: RulePack, rule: Rule, cases: list[dict[str, Any]]) -> RuleDoc:
    alternatives = [[describe_pattern(a, alt[a], rule.order)
                     for a in [rule.order, *sorted(x for x in alt if x != rule.order)]] for alt in rule.when]
    evidence = [{"id": e, "label": pack.evidence[e].label, "citation": pack.evidence[e].citation,
                 "link": pack.evidence[e].link} for e in rule.card.evidence if e in pack.evidence]
    reasons = {r.code: r.display for r in pack.manifest.override_reasons}
    pack_links = {link.id: link for link in pack.manifest.links}
    links = []
    for link_id in rule.card.links:
        if link_id in pack_links:
            links.append({"label": pack_links[link_id].label, "url": pack_links[link_id].url})
        elif link_id in pack.evidence and pack.evidence[link_id].link:
            links.append({"label": pack.evidence[link_id].label, "url": str(pack.evidence[link_id].link)})
    suggestions = [{"label": s.label, "recommended": s.recommended, "when": describe_condition(s.when)}
                   for s in rule.card.suggestions]
    return RuleDoc(rule, alternatives, evidence, [reasons.get(r, r) for r in rule.card.override_reasons],
                   suggestions, links, cases)


def catalogue_context(pack: RulePack) -> dict[str, Any]:
    loaded, _ = load_cases(pack.root, pack)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for c in loaded:
        spec = c.case.input
        source = spec.file or ("inline CDS Hooks request" if spec.request is not None else
                               f"{len(spec.resources or [])} inline FHIR resource(s)")
        expected = [f"{e.indicator} {e.rule}" + (f" on {e.order}" if e.order else "") for e in c.case.expect.cards]
        by_rule.setdefault(c.rule, []).append({"name": c.case.name, "input": source,
                                               "expected": expected or ["no card"],
                                               "fires": any(e.rule == c.rule for e in c.case.expect.cards)})
    classifiers = []
    for name, classifier in pack.manifest.classifiers.items():
        classifiers.append({"name": name, "default": classifier.default, "values": [
            {"value": v.value, "valuesets": v.code, "text": v.text} for v in classifier.values]})
    valuesets = [{"id": vs.id, "title": vs.title, "codes": [
        {"system": KNOWN_SYSTEMS.get(system, system), "code": code, "display": display}
        for (system, code), display in sorted(vs.codes.items())]} for vs in sorted(pack.valuesets.values(),
                                                                                     key=lambda v: v.id)]
    return {"pack": pack, "rules": [_rule_doc(pack, r, by_rule.get(r.id, [])) for r in pack.rules],
            "classifiers": classifiers, "valuesets": valuesets,
            "evidence": sorted(pack.evidence.values(), key=lambda c: c.id),
            "field_names": FIELD_NAMES}


def render_catalogue(pack: RulePack, fmt: str) -> str:
    env = Environment(loader=PackageLoader("ccsvi_cds.authoring", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    name = "catalogue.html.j2" if fmt == "html" else "catalogue.md.j2"
    return env.get_template(name).render(**catalogue_context(pack))


def write_catalogue(pack: RulePack, out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_catalogue(pack, fmt), encoding="utf-8")
