"""Turning codes and text into the values rules match on, as the pack's classifiers say.

Coded data first: the first classifier entry one of whose value sets holds one of the codings wins.
Text second, only if no code decided: the first entry with a pattern found in the texts, where the texts are
the `.text` of the concepts plus the displays of codings no value set of the pack knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from ccsvi_cds.facts.fhir import Coded, Coding
from ccsvi_cds.facts.mentions import TextReader
from ccsvi_cds.rulepack.loader import RulePack

CACHE_SIZE = 50_000


@dataclass(frozen=True)
class CompiledClassifier:
    default: str
    by_code: tuple[tuple[str, frozenset[Coding]], ...]
    text_values: tuple[str, ...]  # value of each named group g0, g1, ... in priority order
    text_pattern: re.Pattern[str] | None  # one alternation: a single scan of the text finds every entry
    mentions: Callable[[str], frozenset[int]] | None = None  # entries a text mentions in context (mentions.py)

    def classify(self, coded: Coded, known: frozenset[Coding]) -> str:
        codes = [c for c, _ in coded.codings]
        if codes:
            for value, members in self.by_code:
                if any(c in members for c in codes):
                    return value
        texts = coded.texts + [display for c, display in coded.codings if display and c not in known]
        if texts and self.text_pattern is not None and self.mentions is not None:
            best = min((i for text in texts for i in self.mentions(text)), default=len(self.text_values))
            if best < len(self.text_values):
                return self.text_values[best]
        return self.default


@dataclass(frozen=True)
class Classifiers:
    by_name: dict[str, CompiledClassifier]
    known_codes: frozenset[Coding]  # every coding in any value set of the pack

    cache: dict[tuple[object, ...], str] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, name: str, coded: Coded) -> str:
        """Memoised: clinical data repeats the same few codes and texts endlessly, and this is pure."""
        key = (name, tuple(coded.codings), tuple(coded.texts))
        value = self.cache.get(key)
        if value is None:
            value = self.by_name[name].classify(coded, self.known_codes)
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = value
        return value


def compile_classifiers(pack: RulePack) -> Classifiers:
    compiled: dict[str, CompiledClassifier] = {}
    for name, spec in pack.manifest.classifiers.items():
        by_code = tuple(
            (entry.value, frozenset(c for vs in entry.code for c in pack.valuesets[vs].codes))
            for entry in spec.values
            if entry.code
        )
        texts = [entry for entry in spec.values if entry.text]
        alternation = "|".join(
            f"(?P<g{i}>{'|'.join(f'(?:{p})' for p in entry.text)})" for i, entry in enumerate(texts)
        )
        pattern = re.compile(alternation, re.IGNORECASE) if texts else None
        compiled[name] = CompiledClassifier(spec.default, by_code, tuple(e.value for e in texts), pattern)
    reader = TextReader({n: c.text_pattern for n, c in compiled.items() if c.text_pattern},
                        pack.manifest.text_context)
    compiled = {n: replace(c, mentions=partial(reader.usable, n)) for n, c in compiled.items()}
    known = frozenset(c for vs in pack.valuesets.values() for c in vs.codes)
    return Classifiers(compiled, known)
