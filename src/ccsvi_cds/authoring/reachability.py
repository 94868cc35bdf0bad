"""Rules that can never fire, found without any input: values no classifier produces, `any` alternatives
that contradict `where`, and rules all of whose `when` alternatives are dead.

Such a rule passes schema validation and silently protects no one, which is worse than a loud error.
"""

from __future__ import annotations

from typing import Any

from ccsvi_cds.facts.schema import MATCHABLE, MS_SUBTYPE_DOMAIN
from ccsvi_cds.rulepack.loader import RulePack, classifier_values
from ccsvi_cds.rulepack.model import FactPattern, Rule, Where
from ccsvi_cds.rulepack.source import Problem, SourceDoc


def producible(pack: RulePack, classifier: str) -> set[str]:
    """Values a classifier can actually give: its default, and entries with a code or a text pattern."""
    spec = pack.manifest.classifiers[classifier]  # type: ignore[index]
    values = {spec.default}
    for entry in spec.values:
        coded = any(vs in pack.valuesets and pack.valuesets[vs].codes for vs in entry.code)
        if coded or entry.text:
            values.add(entry.value)
    return values


def _domain(pack: RulePack, spec: str) -> tuple[set[str], tuple[str, ...]]:
    """(values the facts can actually take, values the field is declared to take)."""
    if spec == MS_SUBTYPE_DOMAIN:
        conditions = producible(pack, "condition")
        subtypes = pack.manifest.records.ms_subtypes
        return {s.subtype for s in subtypes if s.condition in conditions} | {"none"}, \
            pack.manifest.records.subtype_values()
    return producible(pack, spec), classifier_values(pack.manifest, spec)


def _dead_fields(pack: RulePack, kind: str, where: Where, loc: tuple[Any, ...], doc: SourceDoc,
                 problems: list[Problem]) -> bool:
    """True if some field of `where` can match no value at all; reports unproducible values."""
    dead = False
    for field, values in where.items():
        spec = MATCHABLE.get(kind, {}).get(field)
        if not isinstance(spec, str) or not values:
            continue  # fixed or free-text domains; unknown fields and empty lists are the loader's
        can, domain = _domain(pack, spec)
        known = [v for v in values if v in domain]  # values outside the domain are the loader's to report
        never = [v for v in known if v not in can]
        if never and len(never) == len(known):
            dead = True
            problems.append(doc.problem(loc + (field,),
                                        f"the {spec} classifier can never give {', '.join(never)}: "
                                        "this condition can never match",
                                        f"give the '{never[0]}' entry in pack.yaml value sets or text patterns, "
                                        f"or match one of: {', '.join(sorted(can))}"))
        else:
            for v in never:
                problems.append(doc.problem(loc + (field,),
                                            f"the {spec} classifier can never give '{v}' (its entry has no "
                                            "value sets and no text patterns)",
                                            f"add codes or patterns for '{v}' in pack.yaml, or drop it here",
                                            severity="warning"))
    return dead


def _pattern_dead(pack: RulePack, pattern: FactPattern, loc: tuple[Any, ...], doc: SourceDoc,
                  problems: list[Problem]) -> bool:
    dead = _dead_fields(pack, pattern.fact, pattern.where, loc + ("where",), doc, problems)
    live_options = 0
    for k, option in enumerate(pattern.any):
        option_loc = loc + ("any", k)
        option_dead = _dead_fields(pack, pattern.fact, option, option_loc, doc, problems)
        for field, values in option.items():
            required = pattern.where.get(field)
            if required is not None and not set(required) & set(values):
                option_dead = True
                problems.append(doc.problem(option_loc + (field,),
                                            f"any[{k}] needs {field} in {values} but where needs {field} in "
                                            f"{required}: this alternative can never match",
                                            f"drop any[{k}] or make its {field} values overlap the where clause"))
        live_options += not option_dead
    return dead or (bool(pattern.any) and live_options == 0)


def check_reachability(pack: RulePack, rule: Rule, doc: SourceDoc) -> list[Problem]:
    problems: list[Problem] = []
    live = 0
    for i, alternative in enumerate(rule.when):
        dead = False
        for alias, pattern in alternative.items():
            dead |= _pattern_dead(pack, pattern, ("when", i, alias), doc, problems)
        live += not dead
    if live == 0:
        problems.append(doc.problem(("when",), f"rule '{rule.id}' can never fire: every alternative under "
                                               "`when` has a condition no fact can meet",
                                    "fix the conditions reported above"))
    return problems
