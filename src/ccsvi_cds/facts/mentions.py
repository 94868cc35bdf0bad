"""Which of the pack's text targets a clinical text mentions in a context that counts.

A clinician reads "MS ruled out", "mother has MS" or "history of jugular venoplasty" (on a new order) as not
saying that this patient has MS or gets this procedure; "possible MS" counts, like a provisional diagnosis.
Targets are the pack's classifier regexes, kept as regexes (the same `re` semantics as before: lookbehinds,
partial words like 'angioplast'); context comes from medspaCy's ConText with its default rules plus the
pack's `text_context` rules, on a blank spaCy pipeline (no model download).

Cheap first: text is normalised, then the target regexes run; only if a target matched AND a trigger of a
category that can exclude a mention occurs is the text handed to spaCy (imported and built lazily, once per
set of rules). Results are memoised per distinct normalised text.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from ccsvi_cds.rulepack.model import TextContext

if TYPE_CHECKING:
    from spacy.language import Language

CACHE_SIZE = 50_000
SPAN_GROUP = "ccsvi_targets"
MODIFYING = {"FORWARD", "BACKWARD", "BIDIRECTIONAL"}
_SPACES = re.compile(r"\s+")
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "_": " "})
# spaCy's tokenizer splits these inside a word; spelt out, the trigger pre-filter sees what ConText sees
_CONTRACTIONS = ((re.compile(r"(?<=[a-z])n't\b"), " not"), (re.compile(r"\bcannot\b"), "can not"))

ContextRuleDict = dict[str, object]


@dataclass(frozen=True)
class Mention:
    target: str  # classifier name
    index: int  # which of its text entries (group g<index> of its alternation)
    start: int
    end: int
    categories: frozenset[str]  # ConText categories modifying it


def default_context_rules() -> list[ContextRuleDict]:
    """medspaCy's packaged ConText rules, read from its JSON without importing spaCy."""
    spec = importlib.util.find_spec("medspacy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("medspacy is not installed (a dependency of ccsvi-cds)")
    path = Path(next(iter(spec.submodule_search_locations))).parent / "resources" / "en" / "context_rules.json"
    rules: list[ContextRuleDict] = orjson.loads(path.read_bytes())["context_rules"]
    return rules


def context_rules(context: TextContext) -> list[ContextRuleDict]:
    dropped = {d.lower() for d in context.drop_default_rules}
    rules = [r for r in default_context_rules() if str(r["literal"]).lower() not in dropped]
    return rules + [r.model_dump(exclude_none=True) for r in context.rules]


def _abbreviation_key(value: str) -> str:
    key = _SPACES.sub("", value.strip())
    return key if key != key.lower() else key.lower()


def _abbreviation_pattern(key: str) -> str:
    """Whole tokens, spacing free around punctuation; exact case if the pack wrote capitals."""
    phrase = "".join(re.escape(c) if c.isalnum() else rf"\s*{re.escape(c)}\s*" for c in key)
    word = rf"(?<![A-Za-z0-9]){phrase}(?![A-Za-z0-9])"
    return word if key != key.lower() else f"(?i:{word})"


def _word(value: str) -> str:
    """`value` as whole tokens; spacing free around punctuation and between words (the tokenizer's view)."""
    phrase = "".join(re.escape(c) if c.isalnum() else rf"\s*{re.escape(c)}\s*" if not c.isspace() else r"\s*"
                     for c in value.lower().strip())
    return rf"(?<![a-z0-9]){phrase}(?![a-z0-9])"


def trigger_pattern(rules: list[ContextRuleDict], categories: Collection[str]) -> re.Pattern[str]:
    """A regex that occurs in every text where one of `rules` of these `categories` could match.

    A literal rule must occur as words; a token-pattern rule needs its first required token. A pattern this
    cannot read (no LOWER/ORTH/TEXT value) makes the filter match everything: sound, only slower.
    """
    words: set[str] = set()
    for rule in rules:
        if rule["category"] not in categories or rule.get("direction", "BIDIRECTIONAL") not in MODIFYING:
            continue
        pattern = rule.get("pattern")
        if not pattern:
            words.add(_word(str(rule["literal"])))
            continue
        if not isinstance(pattern, list):
            return re.compile("")  # a regex pattern: no cheap superset
        required = next((t for t in pattern if isinstance(t, dict) and t.get("OP") in (None, "+")), None)
        value = next((required[k] for k in ("LOWER", "ORTH", "TEXT") if required and k in required), None)
        if isinstance(value, dict) and isinstance(value.get("IN"), list):
            words.update(_word(str(v)) for v in value["IN"])
        elif isinstance(value, str):
            words.add(_word(value))
        else:
            return re.compile("")
    return re.compile("|".join(sorted(words)) or r"(?!)")


_PIPELINES: dict[str, Language] = {}
_LOCK = threading.Lock()


def pipeline(rules: list[ContextRuleDict]) -> Language:
    """A blank English pipeline: medspaCy's tokenizer, a punctuation sentencizer, ConText. Built once."""
    key = orjson.dumps(rules, option=orjson.OPT_SORT_KEYS).decode()
    with _LOCK:
        nlp = _PIPELINES.get(key)
        if nlp is None:
            nlp = _PIPELINES[key] = _build(rules)
        return nlp


def _build(rules: list[ContextRuleDict]) -> Language:
    from loguru import logger

    logger.disable("PyRuSH")  # medspaCy's other sentence splitter logs every sentence at DEBUG
    logger.disable("medspacy")
    import spacy
    from medspacy.context import ConText, ConTextRule  # type: ignore[import-untyped]
    from medspacy.custom_tokenizer import create_medspacy_tokenizer  # type: ignore[import-untyped]

    nlp = spacy.blank("en")
    nlp.tokenizer = create_medspacy_tokenizer(nlp)
    from spacy.pipeline import Sentencizer

    nlp.add_pipe("sentencizer", config={"punct_chars": [*Sentencizer.default_punct_chars, ";"]})
    context: ConText = nlp.add_pipe("medspacy_context", config={
        "rules": None, "input_span_type": "group", "span_group_name": SPAN_GROUP})
    context.add([ConTextRule.from_dict(dict(r)) for r in rules])
    return nlp


@dataclass
class TextReader:
    """The pack's text targets read in context. One per pack; `usable` is what classify.py calls."""

    targets: Mapping[str, re.Pattern[str]]  # classifier -> alternation of named groups g0, g1, ...
    context: TextContext | None
    cache: dict[str, tuple[Mention, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ctx = self.context
        self.rules = context_rules(ctx) if ctx else []
        self.ignore: dict[str, frozenset[str]] = {
            name: frozenset(ctx.ignore) | frozenset(ctx.ignore_also.get(name, ()))  # type: ignore[call-overload]
            for name in self.targets} if ctx else {}
        excluding: set[str] = set(ctx.ignore).union(*ctx.ignore_also.values()) if ctx else set()
        self.triggers = trigger_pattern(self.rules, excluding) if ctx else None
        # an abbreviation written with capitals in the pack matches only as written ("MS", never the title
        # "Ms"); one written in lower case matches in any case ("s/p", "S/P")
        abbreviations = {_abbreviation_key(k): v.lower() for k, v in (ctx.abbreviations if ctx else {}).items()}
        self.abbreviations = abbreviations
        self.abbreviation = re.compile("|".join(
            _abbreviation_pattern(a) for a in sorted(abbreviations, key=len, reverse=True))) if abbreviations else None
        self.nlp: Language | None = None

    def warm(self) -> None:
        """Import spaCy and build the pipeline now (a service start-up), not on the first text that needs it."""
        if self.context is not None:
            pipeline(self.rules)

    def normalise(self, text: str) -> str:
        """Case, spacing, dashes and quotes, contractions, then the pack's abbreviations spelt out."""
        text = _DASHES.sub("-", unicodedata.normalize("NFKC", text)).translate(_QUOTES)
        if self.abbreviation is not None:
            text = self.abbreviation.sub(self._spelt, text)
        text = text.lower()
        for pattern, spelt in _CONTRACTIONS:
            text = pattern.sub(spelt, text)
        return _SPACES.sub(" ", text).strip()

    def _spelt(self, match: re.Match[str]) -> str:
        key = _SPACES.sub("", match.group(0))
        return self.abbreviations.get(key) or self.abbreviations[key.lower()]

    def usable(self, target: str, text: str) -> frozenset[int]:
        """The entries of classifier `target` that `text` mentions in a context that counts."""
        ignore = self.ignore.get(target, frozenset())
        return frozenset(m.index for m in self.mentions(self.normalise(text))
                         if m.target == target and not m.categories & ignore)

    def mentions(self, text: str) -> tuple[Mention, ...]:
        """Every target occurrence in normalised `text`, with its context. Memoised (pure)."""
        found = self.cache.get(text)
        if found is None:
            found = self._read(text)
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[text] = found
        return found

    def _read(self, text: str) -> tuple[Mention, ...]:
        hits = [(name, int(m.lastgroup[1:]), m.start(), m.end())  # type: ignore[index]
                for name, pattern in self.targets.items() for m in pattern.finditer(text) if m.end() > m.start()]
        if not hits or self.triggers is None or not self.triggers.search(text):
            return tuple(Mention(name, i, s, e, frozenset()) for name, i, s, e in hits)
        categories = self._context(text, sorted({(s, e) for _, _, s, e in hits}))
        return tuple(Mention(name, i, s, e, categories[(s, e)]) for name, i, s, e in hits)

    def _context(self, text: str, spans: list[tuple[int, int]]) -> dict[tuple[int, int], frozenset[str]]:
        nlp = self.nlp = self.nlp or pipeline(self.rules)
        doc = nlp.make_doc(text)
        doc.spans[SPAN_GROUP] = [doc.char_span(s, e, label="target", alignment_mode="expand") or doc[0:0]
                                 for s, e in spans]  # expand: never None for a non-empty range
        doc = nlp(doc)
        return {(s, e): frozenset(mod.category for mod in span._.modifiers)
                for (s, e), span in zip(spans, doc.spans[SPAN_GROUP], strict=True)}
