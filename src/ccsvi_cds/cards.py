"""Findings into CDS Hooks 2.0 cards: the rule's card spec rendered against the facts that matched.

A card that cannot be built raises `CardRenderError` naming its rule: the caller drops that one card and
keeps the others, so one broken template never costs the clinician every other warning.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateError

from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import Rule
from ccsvi_cds.rulepack.templates import inline_citations, template_env

OVERRIDE_SYSTEM = "urn:ccsvi-cds:override-reason"
EXTENSION_PREFIX = "org.ccsvi-cds"
_NAMESPACE = uuid.UUID("5d6c2a57-43c3-4a1c-9e8e-6f1f3f2f8f61")


class CardRenderError(Exception):
    """The card of `rule_id` could not be built; `template_line` is the detail template's line, if known.

    The message names exception types and template names only, never the facts' values (no PHI in logs).
    """

    def __init__(self, rule_id: str, message: str, template_line: int | None = None) -> None:
        super().__init__(f"rule {rule_id}: {message}")
        self.rule_id = rule_id
        self.message = message
        self.template_line = template_line


# Exceptions whose text names types, template names or fields, not data values (ValueError may quote data).
_DESCRIBED = (TemplateError, TypeError, AttributeError, KeyError, ZeroDivisionError, IndexError)


def template_line(exc: BaseException) -> int | None:
    """The detail template's line where `exc` was raised (Jinja2 rewrites template frames as '<template>')."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_error(rule_id: str, exc: Exception) -> CardRenderError:
    what = f"{type(exc).__name__}: {exc}"[:300] if isinstance(exc, _DESCRIBED) else type(exc).__name__
    line = template_line(exc)
    where = f"detail template line {line}" if line is not None else "card"
    return CardRenderError(rule_id, f"{where}: {what}", line)


def suggestion_uuid(pack_name: str, rule_id: str, order_ref: str, index: int) -> str:
    """Stable across calls so that feedback on a suggestion can be traced back to it: uuid5 (RFC 4122: sha1 of
    the namespace and the name) of pack, rule, order and suggestion index."""
    return str(uuid.uuid5(_NAMESPACE, f"{pack_name}|{rule_id}|{order_ref}|{index}"))


class CardBuilder:
    def __init__(self, pack: RulePack, base_url: str, *, strict: bool = False) -> None:
        """strict: undefined names and fields raise (the checks before a pack is accepted), see templates.py."""
        self.pack = pack
        self.base_url = base_url.rstrip("/")
        self.env = template_env(pack.evidence, strict=strict)
        self._details = {r.id: self.env.from_string(inline_citations(r.card.detail, pack.evidence)) for r in pack.rules}
        for template in self._details.values():  # the globals are fixed once the environment is built: a
            template.globals = dict(template.globals)  # plain copy, not a ChainMap walked on every render
        self._reasons = {r.code: r for r in pack.manifest.override_reasons}
        self._links = {link.id: link for link in pack.manifest.links}
        # The parts of a card that depend only on the pack are built once and shared by every card:
        # cards are read-only data (the service copies before adding its uuid).
        pack_ext = {"name": pack.name, "version": pack.version, "digest": pack.digest}
        self._static = {
            r.id: {
                "source": self._source(r),
                "overrideReasons": [
                    {"system": OVERRIDE_SYSTEM, "code": code, "display": self._reasons[code].display}
                    for code in r.card.override_reasons
                ],
                f"{EXTENSION_PREFIX}.rule": {"id": r.id, "version": r.version},
                f"{EXTENSION_PREFIX}.pack": pack_ext,
                f"{EXTENSION_PREFIX}.evidence": list(r.card.evidence),
                "links": [self._link(link_id) for link_id in r.card.links],
            }
            for r in pack.rules
        }

    def build(self, rule: Rule, facts: Mapping[str, Mapping[str, Any]], matched: Mapping[str, Any]) -> dict[str, Any]:
        """facts: the template context (matched aliases plus `order` and `patient`); matched: for the record.

        Raises CardRenderError (and nothing else) when the card cannot be built.
        """
        try:
            return self._build(rule, facts, matched)
        except Exception as exc:
            raise render_error(rule.id, exc) from exc

    def _build(self, rule: Rule, facts: Mapping[str, Mapping[str, Any]], matched: Mapping[str, Any]) -> dict[str, Any]:
        order_ref = facts["order"]["ref"]
        spec = rule.card
        static = self._static[rule.id]
        card: dict[str, Any] = {
            "summary": spec.summary,
            "indicator": rule.indicator,
            "detail": _tidy(self._details[rule.id].render(**facts)),
            "source": static["source"],
        }
        suggestions = []
        for i, s in enumerate(spec.suggestions):
            if not _holds(s.when, facts):
                continue
            suggestion: dict[str, Any] = {
                "label": s.label,
                "uuid": suggestion_uuid(self.pack.name, rule.id, order_ref, i),
                "actions": [self._action(a.type, a.description, a.text, order_ref, facts) for a in s.actions],
            }
            if s.recommended:
                suggestion["isRecommended"] = True
            suggestions.append(suggestion)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        if static["overrideReasons"]:
            card["overrideReasons"] = static["overrideReasons"]
        if static["links"]:
            card["links"] = static["links"]
        card["extension"] = {
            f"{EXTENSION_PREFIX}.rule": static[f"{EXTENSION_PREFIX}.rule"],
            f"{EXTENSION_PREFIX}.pack": static[f"{EXTENSION_PREFIX}.pack"],
            f"{EXTENSION_PREFIX}.evidence": static[f"{EXTENSION_PREFIX}.evidence"],
            f"{EXTENSION_PREFIX}.matched": {alias: dict(f) for alias, f in matched.items()},
        }
        return card

    def _source(self, rule: Rule) -> dict[str, Any]:
        source = self.pack.manifest.source
        out: dict[str, Any] = {
            "label": source.label,
            "topic": {"system": source.topic_system, "code": rule.id, "display": rule.title},
        }
        if source.url:
            out["url"] = source.url
        return out

    def _action(self, kind: str, description: str, text: str | None, order_ref: str,
                facts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        if kind == "delete-order":
            return {"type": "delete", "description": description, "resourceId": order_ref}
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": {"text": text},
        }
        patient = facts["patient"].get("ref")
        if patient and patient != "Patient/unknown":
            resource["subject"] = {"reference": patient}
        return {"type": "create", "description": description, "resource": resource}

    def _link(self, link_id: str) -> dict[str, str]:
        if link_id in self._links:
            link = self._links[link_id]
            return {"label": link.label, "url": link.url.replace("{base_url}", self.base_url), "type": "absolute"}
        citation = self.pack.evidence[link_id]
        assert citation.link is not None  # the loader refuses links without a verified identifier
        return {"label": citation.label, "url": citation.link, "type": "absolute"}


def _holds(when: Mapping[str, Mapping[str, list[str]]], facts: Mapping[str, Mapping[str, Any]]) -> bool:
    return all(
        alias in facts and all(facts[alias].get(name) in values for name, values in where.items())
        for alias, where in when.items()
    )


def _tidy(markdown: str) -> str:
    lines = [line.rstrip() for line in markdown.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return "\n".join(out)
