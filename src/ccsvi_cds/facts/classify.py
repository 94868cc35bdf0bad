"""Turning codes and text into the values rules match on, as the pack's classifiers say.

Codings are compared by meaning (facts/terminology.py): system spellings and ICD code forms are canonicalised
both when the value sets are compiled and when a coding is looked up.

Precedence (also documented in rules/pack.yaml and the README):
1. Coded data first, every coding of every concept read (bodySite and code alike): the first classifier entry,
   in the order pack.yaml lists them, one of whose value sets holds any of the codings wins. A code that
   leaves something unspecified (CPT 37248 says "a vein" but not which) is in none of the site value sets,
   so it never outvotes a coding that names the vein.
2. Text second, only if no coding decided: the first entry with a pattern found in the texts, where the texts
   are the `.text` of the concepts plus the displays of codings no value set of the pack knows, each with its
   whitespace collapsed (case is ignored by the patterns).
3. Otherwise the classifier's default.

A value set holds its pinned expansion plus what its `compose` filters decide locally (an ICD code family,
a code pattern): e.g. any ICD-11 code in the 8A40 family is multiple sclerosis.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ccsvi_cds.facts.fhir import Coded, Coding
from ccsvi_cds.facts.terminology import canonical_coding, canonical_system, code_filter
from ccsvi_cds.rulepack.loader import VALUESETS, RulePack

CACHE_SIZE = 50_000

Rule = tuple[str, Callable[[str], bool]]  # (canonical system, predicate on normalised codes)


@dataclass(frozen=True)
class Members:
    """What one classifier entry recognises: explicit codings, and compose rules per system."""

    codes: frozenset[Coding]
    rules: tuple[Rule, ...] = ()

    def __contains__(self, coding: Coding) -> bool:
        if coding in self.codes:
            return True
        system, code = coding
        return any(system == rule_system and test(code) for rule_system, test in self.rules)


@dataclass(frozen=True)
class CompiledClassifier:
    default: str
    by_code: tuple[tuple[str, Members], ...]
    text_values: tuple[str, ...]  # value of each named group g0, g1, ... in priority order
    text_pattern: re.Pattern[str] | None  # one alternation: a single scan of the text finds every entry

    def classify(self, coded: Coded, known: Members) -> str:
        codes = [canonical_coding(*c) for c, _ in coded.codings]
        if codes:
            for value, members in self.by_code:
                if any(c in members for c in codes):
                    return value
        if self.text_pattern is None:
            return self.default
        texts = coded.texts + [display for (c, (_, display)) in zip(codes, coded.codings, strict=True)
                               if display and c not in known]
        if texts:
            best = len(self.text_values)
            for m in self.text_pattern.finditer("\n".join(" ".join(t.split()) for t in texts)):
                best = min(best, int(m.lastgroup[1:]))  # type: ignore[index]
                if best == 0:
                    break
            if best < len(self.text_values):
                return self.text_values[best]
        return self.default


@dataclass(frozen=True)
class Classifiers:
    by_name: dict[str, CompiledClassifier]
    known: Members  # every coding (and compose rule) of any value set of the pack

    cache: dict[tuple[object, ...], str] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, name: str, coded: Coded) -> str:
        """Memoised: clinical data repeats the same few codes and texts endlessly, and this is pure."""
        key = (name, tuple(coded.codings), tuple(coded.texts))
        value = self.cache.get(key)
        if value is None:
            value = self.by_name[name].classify(coded, self.known)
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = value
        return value


def compose_rules(valueset: Any) -> tuple[Rule, ...]:
    """The locally decidable filters of a ValueSet resource's compose.include (see terminology.code_filter)."""
    rules: list[Rule] = []
    compose = valueset.get("compose") if isinstance(valueset, dict) else None
    for include in (compose or {}).get("include") or []:
        if not isinstance(include, dict) or not isinstance(include.get("system"), str):
            continue
        system = canonical_system(include["system"])
        filters = [f for f in include.get("filter") or [] if isinstance(f, dict)]
        tests = [code_filter(system, str(f.get("property", "")), str(f.get("op", "")), str(f.get("value", "")))
                 for f in filters]
        if not tests or any(t is None for t in tests):
            continue  # a plain concept list (already in the expansion), or undecidable here
        decided = tuple(t for t in tests if t is not None)
        rules.append((system, decided[0] if len(decided) == 1 else _all_of(decided)))
    return tuple(rules)


def _all_of(tests: tuple[Callable[[str], bool], ...]) -> Callable[[str], bool]:
    """Filters within one include must all hold (FHIR); includes are alternatives."""
    return lambda code: all(t(code) for t in tests)


def _members(pack: RulePack, ids: Iterable[str]) -> Members:
    codes: set[Coding] = set()
    rules: list[Rule] = []
    for vid in ids:
        codes.update(canonical_coding(*c) for c in pack.valuesets[vid].codes)
        doc = pack.files.get(f"{VALUESETS}/{vid}.json")
        if doc is not None:
            rules.extend(compose_rules(doc.data))
    return Members(frozenset(codes), tuple(rules))


def compile_classifiers(pack: RulePack) -> Classifiers:
    compiled: dict[str, CompiledClassifier] = {}
    for name, spec in pack.manifest.classifiers.items():
        by_code = tuple((entry.value, _members(pack, entry.code)) for entry in spec.values if entry.code)
        texts = [entry for entry in spec.values if entry.text]
        alternation = "|".join(
            f"(?P<g{i}>{'|'.join(f'(?:{p})' for p in entry.text)})" for i, entry in enumerate(texts)
        )
        pattern = re.compile(alternation, re.IGNORECASE) if texts else None
        compiled[name] = CompiledClassifier(spec.default, by_code, tuple(e.value for e in texts), pattern)
    return Classifiers(compiled, _members(pack, pack.valuesets))
