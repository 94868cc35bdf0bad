"""The one evaluation path: FHIR resources in, findings and CDS Hooks cards out.

The service, the batch audit, `ccsvi-cds check` and the rule tests all call `Evaluator.evaluate`, so a card
the EHR sees and a finding an auditor reads come from the same code. Pure apart from the engine's private
state: the same input gives the same findings, in the same order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccsvi_cds.cards import CardBuilder, CardRenderError
from ccsvi_cds.engine import Match, RuleEngine
from ccsvi_cds.facts.classify import compile_classifiers
from ccsvi_cds.facts.extract import Issue, PatientGroup, group_by_patient, project_group
from ccsvi_cds.facts.fhir import Located, Resource, ShapeError, flatten, normalize_reference
from ccsvi_cds.facts.hookrequest import is_hook_request, resources_from_hook_request
from ccsvi_cds.facts.validate import validation_errors
from ccsvi_cds.rulepack.compiler import admission_filter, compile_rules, rule_id_of
from ccsvi_cds.rulepack.loader import RulePack

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
SEVERITY = {"critical": 0, "warning": 1, "info": 2}

__all__ = ["DEFAULT_BASE_URL", "Evaluation", "Evaluator", "Finding", "Issue"]


@dataclass(frozen=True)
class Finding:
    rule_id: str
    rule_version: str
    indicator: str
    summary: str
    order_ref: str
    patient_ref: str | None
    evidence_ids: tuple[str, ...]
    matched: dict[str, dict[str, Any]]
    requester: str | None
    authored_on: str | None
    status: str | None
    source_path: str
    card: dict[str, Any]


@dataclass
class Evaluation:
    findings: list[Finding] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    orders_evaluated: int = 0
    card_errors: list[CardRenderError] = field(default_factory=list)  # findings dropped: their card failed

    @property
    def cards(self) -> list[dict[str, Any]]:
        return [f.card for f in self.findings]


class Evaluator:
    """A compiled pack ready to evaluate. Build one per process: the engine is not thread-safe or picklable."""

    def __init__(self, pack: RulePack, *, base_url: str = DEFAULT_BASE_URL, validate: bool = False) -> None:
        self.pack = pack
        self.validate = validate
        self._classify = compile_classifiers(pack)
        self._engine = RuleEngine(compile_rules(pack.rules), name=pack.name)
        self._cards = CardBuilder(pack, base_url)
        self._rules = {r.id: r for r in pack.rules}
        self._priority = {r.id: r.priority for r in pack.rules}
        admit = admission_filter(pack.rules)
        self._admit = {kind: tuple(fields.items()) for kind, fields in admit.items()}

    def _admitted(self, fact: dict[str, Any]) -> bool:
        constraints = self._admit.get(fact["kind"])
        if constraints is None:
            return False  # no rule mentions this kind of fact
        return all(fact.get(name) in allowed for name, allowed in constraints)

    def evaluate_request(self, request: Mapping[str, Any]) -> Evaluation:
        """A CDS Hooks request: its draft orders (order-select: the selections) with its prefetch."""
        located, targets = resources_from_hook_request(request)
        patient = (request.get("context") or {}).get("patientId")
        return self.evaluate(located, targets, default_patient=patient if isinstance(patient, str) else None)

    def evaluate_document(self, data: Any, origin: str) -> Evaluation:
        """A JSON document as users hand it over: a CDS Hooks request, a FHIR resource or Bundle, or a list."""
        if is_hook_request(data):
            return self.evaluate_request(data)
        if isinstance(data, list):
            return self.evaluate([Located(f"{origin}[{i}]", r) for i, r in enumerate(data)])
        return self.evaluate([Located(origin, data)])

    def evaluate(self, resources: Iterable[Resource | Located | tuple[str, Resource]],
                 targets: Collection[str] | None = None, *, default_patient: str | None = None) -> Evaluation:
        """Evaluate the orders among `resources` (all ServiceRequests, or only `targets`), patient by patient."""
        result = Evaluation()
        try:
            located, aliases = flatten(resources)
        except ShapeError as exc:
            result.issues.append(Issue(exc.path, exc.message))
            return result
        if self.validate:
            located = self._validated(located, result.issues)
        wanted = None
        if targets is not None:
            wanted = {normalize_reference(t, aliases) or t for t in targets}
        default = normalize_reference(default_patient) if default_patient else None
        if default_patient and default is None:
            default = f"Patient/{default_patient}"
        groups, shared = group_by_patient(located, aliases, default, result.issues)
        for key in sorted(groups, key=lambda k: k or ""):
            group = groups[key]
            project_group(group, shared, aliases, self._classify, self.pack.manifest.trial, wanted, result.issues)
            if not group.orders:
                continue
            result.orders_evaluated += len(group.orders)
            facts = [f for f in group.facts if self._admitted(f)]
            if not any(f["kind"] == "order" for f in facts):
                continue
            matches = self._engine.run(facts)
            result.findings.extend(self._findings(group, matches, result.card_errors))
        result.findings.sort(key=lambda f: (f.patient_ref or "", f.order_ref, SEVERITY[f.indicator],
                                            self._priority[f.rule_id], f.rule_id))
        return result

    def _validated(self, located: list[Located], issues: list[Issue]) -> list[Located]:
        kept = []
        for item in located:
            errors = validation_errors(item.resource, item.path)
            issues.extend(Issue(path, f"invalid FHIR: {msg}") for path, msg in errors)
            if not errors:
                kept.append(item)
        return kept

    def _findings(self, group: PatientGroup, matches: list[Match],
                  card_errors: list[CardRenderError]) -> list[Finding]:
        seen: dict[tuple[str, str], Any] = {}
        for match in sorted(matches, key=lambda m: (m.rule, sorted((a, f.get("ref", "")) for a, f in m.facts.items()))):
            rule = self._rules[rule_id_of(match.rule)]
            order_ref = match.facts[rule.order]["ref"]
            seen.setdefault((rule.id, order_ref), (rule, match))
        out = []
        for (rule_id, order_ref), (rule, match) in sorted(seen.items()):
            full = {alias: group.fact(f["ref"]) or f for alias, f in match.facts.items()}
            context = {**full, "order": full[rule.order], "patient": group.facts[0]}
            matched = {alias: {k: v for k, v in f.items() if v is not None} for alias, f in full.items()}
            try:
                card = self._cards.build(rule, context, matched)
            except CardRenderError as exc:  # skip this finding only; the caller reports it
                card_errors.append(exc)
                continue
            order = full[rule.order]
            located = group.orders[order_ref]
            out.append(Finding(
                rule_id=rule.id, rule_version=rule.version, indicator=rule.indicator, summary=rule.card.summary,
                order_ref=order_ref, patient_ref=group.patient, evidence_ids=tuple(rule.card.evidence),
                matched=matched, requester=order.get("requester"), authored_on=order.get("authored"),
                status=order.get("status"), source_path=located.path, card=card,
            ))
        return out
