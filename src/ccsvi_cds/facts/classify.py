"""Turning codes and text into the values rules match on, as the pack's classifiers say.

Coded data first: the first classifier entry one of whose value sets holds one of the codings wins.
Text second, only if no code decided: the first entry with a pattern found in the texts, where the texts are
the `.text` of the concepts plus the displays of codings no value set of the pack knows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ccsvi_cds.facts.fhir import Coded, Coding
from ccsvi_cds.rulepack.loader import RulePack


@dataclass(frozen=True)
class CompiledClassifier:
    default: str
    by_code: tuple[tuple[str, frozenset[Coding]], ...]
    by_text: tuple[tuple[str, re.Pattern[str]], ...]

    def classify(self, coded: Coded, known: frozenset[Coding]) -> str:
        codes = [c for c, _ in coded.codings]
        for value, members in self.by_code:
            if any(c in members for c in codes):
                return value
        texts = coded.texts + [display for c, display in coded.codings if display and c not in known]
        if texts:
            blob = "\n".join(texts)
            for value, pattern in self.by_text:
                if pattern.search(blob):
                    return value
        return self.default


@dataclass(frozen=True)
class Classifiers:
    by_name: dict[str, CompiledClassifier]
    known_codes: frozenset[Coding]  # every coding in any value set of the pack

    def __call__(self, name: str, coded: Coded) -> str:
        return self.by_name[name].classify(coded, self.known_codes)

    def in_valueset(self, codings: Iterable[Coding], members: frozenset[Coding]) -> bool:
        return any(c in members for c in codings)


def compile_classifiers(pack: RulePack) -> Classifiers:
    compiled: dict[str, CompiledClassifier] = {}
    for name, spec in pack.manifest.classifiers.items():
        by_code = tuple(
            (entry.value, frozenset(c for vs in entry.code for c in pack.valuesets[vs].codes))
            for entry in spec.values
            if entry.code
        )
        by_text = tuple(
            (entry.value, re.compile("|".join(f"(?:{p})" for p in entry.text), re.IGNORECASE))
            for entry in spec.values
            if entry.text
        )
        compiled[name] = CompiledClassifier(spec.default, by_code, by_text)
    known = frozenset(c for vs in pack.valuesets.values() for c in vs.codes)
    return Classifiers(compiled, known)
