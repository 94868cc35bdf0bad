"""The one evaluation path: FHIR resources in, findings and CDS Hooks cards out.

The service, the batch audit, `ccsvi-cds check` and the rule tests all call `Evaluator.evaluate`, so a card
the EHR sees and a finding an auditor reads come from the same code. Pure apart from the engine's private
state: the same input gives the same findings, in the same order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ccsvi_cds.cards import CardBuilder, CardRenderError
from ccsvi_cds.engine import Match, RuleEngine
from ccsvi_cds.facts.classify import compile_classifiers
from ccsvi_cds.facts.extract import PatientFacts, Projector
from ccsvi_cds.facts.fhir import Located, Resource, ShapeError
from ccsvi_cds.facts.issues import Issue, IssueKind
from ccsvi_cds.facts.memo import Memo
from ccsvi_cds.facts.records import Item, Records, read_document, read_records, read_request
from ccsvi_cds.facts.requirements import DataRequirements, data_requirements, own_fields
from ccsvi_cds.facts.validate import validation_errors
from ccsvi_cds.rulepack.compiler import admission, compile_rules, named_values, rule_id_of, screen
from ccsvi_cds.rulepack.loader import RulePack

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
SEVERITY = {"critical": 0, "warning": 1, "info": 2}
SCREEN_CACHE_SIZE = 50_000

__all__ = ["DEFAULT_BASE_URL", "Evaluation", "Evaluator", "Finding", "Issue", "IssueKind", "OrderScreen"]


class OrderScreen(Enum):
    """What one ServiceRequest says of itself, before any join (`Evaluator.screen`)."""

    NOT_EVALUATED = "not-evaluated"  # its status does not count (pack.yaml records.order_excluded_status)
    NO_RULE = "no-rule"  # evaluated, but no rule could match it, whatever the patient's other records say
    CANDIDATE = "candidate"  # some rule could match it: its patient must be joined and evaluated in full


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
    requester: str | None  # "Type/id"
    requester_display: str | None
    authored_on: str | None
    status: str | None
    source_path: str
    source: object  # the shell's handle on the order's record (see Issue.source)
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
        self.requirements: DataRequirements = data_requirements(pack)
        self._classify = compile_classifiers(pack)
        self._project = Projector(self._classify, pack.manifest.trial, pack.manifest.records)
        self._engine = RuleEngine(compile_rules(pack.rules), name=pack.name)
        self._cards = CardBuilder(pack, base_url)
        self._rules = {r.id: r for r in pack.rules}
        self._priority = {r.id: r.priority for r in pack.rules}
        self._admit = {kind: (named_values(options), options) for kind, options in admission(pack.rules).items()}
        self._admissions: Memo[tuple[Any, ...], bool] = Memo(SCREEN_CACHE_SIZE)
        self._screen = screen(pack.rules, "order", own_fields("order"))
        self._verdicts: Memo[bytes, OrderScreen] = Memo(SCREEN_CACHE_SIZE)

    def warm(self) -> None:
        """Load what is otherwise loaded on first use (the clinical-text pipeline): for a service, whose first
        request must not wait seconds; an audit that never meets such text never pays for it."""
        self._classify.warm()

    def _admitted(self, fact: dict[str, Any]) -> bool:
        """Whether some rule could match `fact` (`admission`): only those enter the engine. Memoised on the
        values the patterns read, each one a value some pattern names or None (for any other, which no pattern
        accepts): the memo holds at most the combinations of the rules' own values."""
        kind = fact["kind"]
        entry = self._admit.get(kind)
        if entry is None:
            return False  # no rule mentions this kind of fact
        named, options = entry
        get = fact.get
        key = (kind, *[value if (value := get(name)) in values else None for name, values in named])
        verdict = self._admissions.get(key)
        if verdict is None:
            verdict = self._admissions.put(
                key, any(all(get(name) in allowed for name, allowed in option) for option in options))
        return verdict

    def screen(self, order: Resource) -> OrderScreen:
        """Judge one ServiceRequest by its own fields against a relaxation of every rule's order pattern: a
        patient none of whose orders is a CANDIDATE gets no finding, so a batch need not join them at all.
        Memoised on what the verdict depends on (`Projector.own_key`)."""
        key = self._project.own_key(order)
        verdict = self._verdicts.get(key) if key is not None else None
        if verdict is None:
            verdict = self._verdicts.put(key, self._screen_order(order))
        return verdict

    def _screen_order(self, order: Resource) -> OrderScreen:
        try:
            if not self._project.order_counts(order, "ServiceRequest"):
                return OrderScreen.NOT_EVALUATED
            fields = self._project.own_fields(order, "ServiceRequest")
        except ShapeError:
            return OrderScreen.CANDIDATE  # the full evaluation says where it is malformed
        if any(all(fields[name] in allowed for name, allowed in option) for option in self._screen):
            return OrderScreen.CANDIDATE
        return OrderScreen.NO_RULE

    # --- reading input (the records core does it; these only pick the entry shape)

    def read(self, resources: Iterable[Item], targets: Collection[str] | None = None, *,
             default_patient: str | None = None) -> Records:
        return read_records(resources, self.requirements.types, targets=targets, default_patient=default_patient,
                            check=self._check if self.validate else None)

    def read_request(self, request: Mapping[str, Any]) -> Records:
        return read_request(request, self.requirements.types, check=self._check if self.validate else None)

    @staticmethod
    def _check(item: Located) -> list[Issue]:
        return [Issue(path, f"invalid FHIR: {msg}", IssueKind.INVALID_FHIR, item.source)
                for path, msg in validation_errors(item.resource, item.path)]

    # --- evaluating

    def evaluate_request(self, request: Mapping[str, Any]) -> Evaluation:
        """A CDS Hooks request: its draft orders (order-select: the selections) with its prefetch."""
        return self.evaluate_records(self.read_request(request))

    def evaluate_document(self, data: Any, origin: str) -> Evaluation:
        """A JSON document as users hand it over: a CDS Hooks request, a FHIR resource or Bundle, or a list."""
        return self.evaluate_records(read_document(data, origin, self.requirements.types,
                                                   self._check if self.validate else None))

    def evaluate(self, resources: Iterable[Item], targets: Collection[str] | None = None, *,
                 default_patient: str | None = None) -> Evaluation:
        """Evaluate the orders among `resources` (all ServiceRequests, or only `targets`), patient by patient."""
        return self.evaluate_records(self.read(resources, targets, default_patient=default_patient))

    def evaluate_records(self, records: Records) -> Evaluation:
        result = Evaluation(issues=list(records.issues))
        for key in sorted(records.patients, key=lambda k: k or ""):
            group = self._project.project(records, records.patients[key], result.issues)
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

    def _findings(self, group: PatientFacts, matches: list[Match],
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
                matched=matched, requester=order.get("requester"), requester_display=order.get("requester_display"),
                authored_on=order.get("authored"), status=order.get("status"), source_path=located.path,
                source=located.source, card=card,
            ))
        return out
