"""`rules docs`: a readable catalogue of a pack (HTML or Markdown) for clinicians, reviewers and auditors.

Everything is derived from the loaded pack and its cases, so the catalogue cannot disagree with what runs:
each rule's conditions in plain language, its card as a clinician sees it (rendered from each of its test
cases through the evaluation path), evidence with links, the classifiers and value sets with their codes,
and the test cases with what they expect. Internal values (`outflow`, `unspecified`) are put in words from
the pack's `docs/glossary.yaml` (field -> value -> meaning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from ccsvi_cds.authoring.cases import LoadedCase, load_cases
from ccsvi_cds.authoring.lint import KNOWN_SYSTEMS
from ccsvi_cds.evaluate import DEFAULT_BASE_URL, Evaluator
from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import FactPattern, Rule, Where
from ccsvi_cds.rulepack.source import SourceError, read_doc

GLOSSARY = "docs/glossary.yaml"
Glossary = dict[str, dict[str, str]]
_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # card text is data: no raw HTML passes through

FACT_NAMES = {"order": "the order", "patient": "the patient", "procedure": "a procedure on record"}
FIELD_NAMES = {"procedure": "procedure", "site": "site", "vessel": "vessel", "reason": "stated reason",
               "trial": "trial link", "status": "status", "study_status": "study status", "ms": "has MS",
               "ms_subtype": "MS subtype"}


def load_glossary(pack: RulePack) -> Glossary:
    """The pack's words for its values; empty when it has none (values are then shown as they are)."""
    path = pack.root / GLOSSARY
    if not path.is_file():
        return {}
    try:
        data = read_doc(path, str(path)).data
    except SourceError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(f): {str(v): str(t) for v, t in vals.items()} for f, vals in data.items() if isinstance(vals, dict)}


def _word(field: str, value: str, glossary: Glossary) -> str:
    meaning = glossary.get(field, {}).get(value)
    return f"{meaning} (`{value}`)" if meaning else f"'{value}'"


def _values(field: str, values: list[str], glossary: Glossary) -> str:
    words = [_word(field, v, glossary) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _clause(where: Where, glossary: Glossary | None = None) -> str:
    return " and ".join(f"{FIELD_NAMES.get(f, f)} is {_values(f, v, glossary or {})}" for f, v in where.items())


def describe_pattern(alias: str, pattern: FactPattern, order_alias: str, glossary: Glossary | None = None) -> str:
    """One sentence, e.g. "the order: procedure is 'stent' and trial link is 'none' or 'not-approved';
    and either site is 'outflow', or site is 'unspecified' and vessel is 'vein'"."""
    who = FACT_NAMES[pattern.fact] + ("" if alias in (order_alias, "patient") else f" (`{alias}`)")
    parts = [_clause(pattern.where, glossary)] if pattern.where else []
    if pattern.any:
        options = [_clause(w, glossary) or "anything" for w in pattern.any]
        parts.append(options[0] if len(options) == 1 else "either " + ", or ".join(options))
    return f"{who}: " + ("; and ".join(parts) if parts else "any")


def describe_condition(when: dict[str, Where], glossary: Glossary | None = None) -> str:
    """A suggestion's condition, {alias: {field: values}}, in words."""
    return " and ".join(f"{FACT_NAMES.get(alias, alias)}: {_clause(where, glossary)}" for alias, where in when.items())


@dataclass(frozen=True)
class ShownCard:
    """A card exactly as the service returns it for one test case, ready to show a reviewer."""

    case: str
    order: str
    indicator: str
    summary: str
    detail_markdown: str
    detail_html: str
    suggestions: list[str]
    links: list[dict[str, str]]


def cards_from_case(evaluator: Evaluator, loaded: LoadedCase) -> list[dict[str, Any]] | str:
    """The cards the pack answers a case's input with (the service's evaluation path), or why it could not."""
    spec = loaded.case.input
    try:
        if spec.file is not None:
            path = loaded.base / spec.file
            evaluation = evaluator.evaluate_document(orjson.loads(path.read_bytes()), str(path))
        else:
            evaluation = evaluator.evaluate_document(spec.request if spec.request is not None else spec.resources,
                                                     "request" if spec.request is not None else "resources")
    except (OSError, orjson.JSONDecodeError) as exc:
        return f"cannot read the input: {exc}"
    return evaluation.cards


def shown_cards(rule_id: str, case_name: str, cards: list[dict[str, Any]]) -> list[ShownCard]:
    out = []
    for card in cards:
        if (card.get("source") or {}).get("topic", {}).get("code") != rule_id:
            continue
        detail = str(card.get("detail", ""))
        target = next((a.get("resourceId") for s in card.get("suggestions", []) for a in s.get("actions", [])
                       if a.get("resourceId")), "")
        out.append(ShownCard(case_name, str(target), str(card.get("indicator", "")), str(card.get("summary", "")),
                             detail, _MARKDOWN.render(detail),
                             [str(s.get("label", "")) + (" (recommended)" if s.get("isRecommended") else "")
                              for s in card.get("suggestions", [])],
                             [{"label": str(link.get("label", "")), "url": str(link.get("url", ""))}
                              for link in card.get("links", [])]))
    return out


@dataclass(frozen=True)
class RuleDoc:
    rule: Rule
    alternatives: list[list[str]]
    evidence: list[dict[str, Any]]
    override_reasons: list[str]
    suggestions: list[dict[str, Any]]
    links: list[dict[str, str]]
    cases: list[dict[str, Any]]
    shown: list[ShownCard]


def _rule_doc(pack: RulePack, rule: Rule, cases: list[dict[str, Any]], shown: list[ShownCard],
              glossary: Glossary, base_url: str) -> RuleDoc:
    alternatives = [[describe_pattern(a, alt[a], rule.order, glossary)
                     for a in [rule.order, *sorted(x for x in alt if x != rule.order)]] for alt in rule.when]
    evidence = [{"id": e, "label": pack.evidence[e].label, "citation": pack.evidence[e].citation,
                 "link": pack.evidence[e].link} for e in rule.card.evidence if e in pack.evidence]
    reasons = {r.code: r.display for r in pack.manifest.override_reasons}
    pack_links = {link.id: link for link in pack.manifest.links}
    links = []
    for link_id in rule.card.links:
        if link_id in pack_links:
            links.append({"label": pack_links[link_id].label,
                          "url": pack_links[link_id].url.replace("{base_url}", base_url.rstrip("/"))})
        elif link_id in pack.evidence and pack.evidence[link_id].link:
            links.append({"label": pack.evidence[link_id].label, "url": str(pack.evidence[link_id].link)})
    suggestions = [{"label": s.label, "recommended": s.recommended, "when": describe_condition(s.when, glossary)}
                   for s in rule.card.suggestions]
    return RuleDoc(rule, alternatives, evidence, [reasons.get(r, r) for r in rule.card.override_reasons],
                   suggestions, links, cases, shown)


def catalogue_context(pack: RulePack, base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
    loaded, _ = load_cases(pack.root, pack)
    glossary = load_glossary(pack)
    evaluator = Evaluator(pack, base_url=base_url)
    shown: dict[str, list[ShownCard]] = {}
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for c in loaded:
        cards = cards_from_case(evaluator, c)
        if isinstance(cards, list):
            shown.setdefault(c.rule, []).extend(shown_cards(c.rule, c.case.name, cards))
        spec = c.case.input
        source = spec.file or ("inline CDS Hooks request" if spec.request is not None else
                               f"{len(spec.resources or [])} inline FHIR resource(s)")
        expected = [f"{e.indicator} {e.rule}" + (f" on {e.order}" if e.order else "") for e in c.case.expect.cards]
        by_rule.setdefault(c.rule, []).append({"name": c.case.name, "input": source,
                                               "expected": expected or ["no card"],
                                               "fires": any(e.rule == c.rule for e in c.case.expect.cards)})
    classifiers = []
    for name, classifier in pack.manifest.classifiers.items():
        meaning = glossary.get(name, {})
        classifiers.append({"name": name, "default": classifier.default,
                            "default_meaning": meaning.get(classifier.default, ""), "values": [
            {"value": v.value, "valuesets": v.code, "text": v.text, "meaning": meaning.get(v.value, "")}
            for v in classifier.values]})
    valuesets = [{"id": vs.id, "title": vs.title, "codes": [
        {"system": KNOWN_SYSTEMS.get(system, system), "code": code, "display": display}
        for (system, code), display in sorted(vs.codes.items())]} for vs in sorted(pack.valuesets.values(),
                                                                                     key=lambda v: v.id)]
    return {"pack": pack, "rules": [_rule_doc(pack, r, by_rule.get(r.id, []), shown.get(r.id, []), glossary, base_url)
                                    for r in pack.rules],
            "classifiers": classifiers, "valuesets": valuesets,
            "evidence": sorted(pack.evidence.values(), key=lambda c: c.id),
            "field_names": FIELD_NAMES,
            "other_values": {f: v for f, v in glossary.items() if f not in pack.manifest.classifiers}}


def _code_html(text: str) -> Markup:
    """Escaped text with `value` spans as <code> (the sentences are written for Markdown)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def render_catalogue(pack: RulePack, fmt: str, base_url: str = DEFAULT_BASE_URL) -> str:
    env = Environment(loader=PackageLoader("ccsvi_cds.authoring", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["code"] = _code_html
    name = "catalogue.html.j2" if fmt == "html" else "catalogue.md.j2"
    return env.get_template(name).render(**catalogue_context(pack, base_url))


def write_catalogue(pack: RulePack, out: Path, fmt: str, base_url: str = DEFAULT_BASE_URL) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_catalogue(pack, fmt, base_url), encoding="utf-8")
