"""Compile rules into durable_rules ruleset JSON.

Each alternative of a rule's `when` becomes one engine rule named `<rule-id>#<n>`; each alias becomes one
fact expression: `kind` equality, an `$and` of the `where` fields (each an `$or` of its values) and, if
given, an `$or` over the `any` alternatives. The engine then does the joins; nothing here is evaluated.
"""

from __future__ import annotations

from typing import Any

from ccsvi_cds.rulepack.model import FactPattern, Rule, Where

Expr = dict[str, Any]
SEPARATOR = "#"


def _one_of(field: str, values: list[str]) -> Expr:
    if len(values) == 1:
        return {field: values[0]}
    return {"$or": [{field: v} for v in values]}


def _all(parts: list[Expr]) -> Expr:
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _where(where: Where) -> list[Expr]:
    return [_one_of(field, values) for field, values in sorted(where.items())]


def compile_pattern(pattern: FactPattern) -> Expr:
    parts: list[Expr] = [{"kind": pattern.fact}, *_where(pattern.where)]
    if pattern.any:
        options = [_all(_where(w)) if w else {"kind": pattern.fact} for w in pattern.any]
        parts.append(options[0] if len(options) == 1 else {"$or": options})
    return _all(parts)


def compile_rule(rule: Rule) -> dict[str, Expr]:
    """{engine rule name: {"all": [{alias: expr}, ...]}}, aliases in a stable order."""
    compiled: dict[str, Expr] = {}
    for n, alternative in enumerate(rule.when):
        aliases = [rule.order] + sorted(a for a in alternative if a != rule.order)
        compiled[f"{rule.id}{SEPARATOR}{n}"] = {
            "all": [{alias: compile_pattern(alternative[alias])} for alias in aliases]
        }
    return compiled


def compile_rules(rules: tuple[Rule, ...] | list[Rule]) -> dict[str, Expr]:
    compiled: dict[str, Expr] = {}
    for rule in rules:
        compiled.update(compile_rule(rule))
    return compiled


def rule_id_of(engine_rule: str) -> str:
    return engine_rule.split(SEPARATOR, 1)[0]


Constraint = tuple[tuple[str, frozenset[str]], ...]  # every (field, allowed values) must hold


def screen(rules: tuple[Rule, ...] | list[Rule], kind: str, fields: frozenset[str]) -> tuple[Constraint, ...]:
    """The alternatives under which a fact of `kind` could match some rule, judged on `fields` alone.

    Each pattern of that kind contributes its `where` and each of its `any` alternatives, restricted to
    `fields`: a relaxation of the rules, so a fact that meets none of them matches no rule whatever the
    other fields hold. The audit uses it to join only the patients with an order some rule could match.
    """
    out: set[Constraint] = set()
    for rule in rules:
        for alternative in rule.when:
            for pattern in alternative.values():
                if pattern.fact != kind:
                    continue
                base = {f: frozenset(v) for f, v in pattern.where.items() if f in fields}
                for option in pattern.any or [{}]:
                    both = dict(base)
                    for f, values in option.items():
                        if f in fields:
                            both[f] = both[f] & frozenset(values) if f in both else frozenset(values)
                    out.add(tuple(sorted(both.items())))
    kept = [c for c in out if not any(other != c and _implies(c, other) for other in out)]
    return tuple(sorted(kept, key=lambda c: [(f, sorted(v)) for f, v in c]))


def _implies(narrow: Constraint, wide: Constraint) -> bool:
    """Whatever meets `narrow` meets `wide` (so `narrow` adds nothing to a disjunction holding `wide`)."""
    held = dict(narrow)
    return all(f in held and held[f] <= allowed for f, allowed in wide)


def admission(rules: tuple[Rule, ...]) -> dict[str, tuple[Constraint, ...]]:
    """Per fact kind, the alternatives under which a fact of that kind could match some pattern of some rule
    (`screen` on every field the patterns name): a fact that meets none matches no rule, so it need not enter
    the engine, whose cost is per fact asserted (the idea of a Rete alpha network, applied before the C core).
    An unrelated order, and an angioplasty of a dialysis circuit, stop here."""
    fields: dict[str, set[str]] = {}
    for rule in rules:
        for alternative in rule.when:
            for pattern in alternative.values():
                named = fields.setdefault(pattern.fact, set())
                for where in (pattern.where, *pattern.any):
                    named.update(where)
    return {kind: screen(rules, kind, frozenset(names)) for kind, names in fields.items()}


def named_values(options: tuple[Constraint, ...]) -> tuple[tuple[str, frozenset[str]], ...]:
    """Each field the `options` constrain, with every value any of them names for it."""
    named: dict[str, set[str]] = {}
    for option in options:
        for name, allowed in option:
            named.setdefault(name, set()).update(allowed)
    return tuple((name, frozenset(values)) for name, values in sorted(named.items()))
