"""What data the pack's rules need, derived from the rules themselves: one function every shell asks.

The service derives its prefetch templates and fallback reads from it, the audit its type filters, the
records core what it indexes. A rule that reads no prior procedure makes nobody fetch Procedures.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccsvi_cds.facts.records import PATIENT_KEYED_TYPES
from ccsvi_cds.facts.schema import MATCHABLE
from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import FactPattern

# Which FHIR resource types each fact field is computed from. Patient-searched types are found by the
# patient's id; followed types by reference from them (a ResearchStudy from an order or a ResearchSubject).
_ALL = "*"
SOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("order", _ALL): ("ServiceRequest",),
    ("order", "reason"): ("Condition",),  # reasonReference
    ("order", "trial"): ("ResearchSubject", "ResearchStudy"),
    ("order", "study_status"): ("ResearchSubject", "ResearchStudy"),
    ("patient", "ms"): ("Condition",),
    ("patient", "ms_subtype"): ("Condition",),
    ("procedure", _ALL): ("Procedure",),
    ("procedure", "reason"): ("Condition",),
}
FOLLOWED_BY_REFERENCE = frozenset({"ResearchStudy"})


def own_fields(kind: str) -> frozenset[str]:
    """The matchable fields of a fact computed from its own resource alone (no other resource read): what a
    reader can judge one record by before any join (e.g. an order's procedure, site and status)."""
    return frozenset(f for f in MATCHABLE[kind] if (kind, f) not in SOURCES)


@dataclass(frozen=True)
class DataRequirements:
    types: frozenset[str]  # every resource type the rules read (records index these, the audit keeps these)
    patient_searches: tuple[str, ...]  # types read by patient (prefetch templates), in a stable order
    by_reference: frozenset[str]  # types read by reference when the input lacks them

    def prefetch_templates(self) -> dict[str, str]:
        """CDS Hooks 2.0 prefetch templates in the spec's recommended subset (no _include, no chaining)."""
        return {f"{t[0].lower()}{t[1:]}s": f"{t}?patient={{{{context.patientId}}}}" for t in self.patient_searches}


def _fields(pattern: FactPattern) -> set[str]:
    out = set(pattern.where)
    for alternative in pattern.any:
        out |= set(alternative)
    return out


def data_requirements(pack: RulePack) -> DataRequirements:
    used: set[tuple[str, str]] = set()
    for rule in pack.rules:
        for alternative in rule.when:
            for pattern in alternative.values():
                used.add((pattern.fact, _ALL))
                used.update((pattern.fact, f) for f in _fields(pattern))
        for suggestion in rule.card.suggestions:
            for alias, where in suggestion.when.items():
                kind = next((a[alias].fact for a in rule.when if alias in a), alias)
                used.update((kind, f) for f in where)
    types: set[str] = {"Patient"}
    for key in used:
        types.update(SOURCES.get(key, ()))
    searched = tuple(sorted(types & PATIENT_KEYED_TYPES - {"Patient", "ServiceRequest"}))  # orders come as context
    return DataRequirements(frozenset(types), searched, frozenset(types & FOLLOWED_BY_REFERENCE))
