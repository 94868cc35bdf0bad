"""Clinical text in context: medspaCy ConText (what facts/mentions.py uses) against negspacy (NegEx), on the
phrasings the product sees in Condition.code.text, order and reason text and notes.

For each library: how many phrasings it reads right (does the text say this patient has MS / gets this
procedure?), the one-off cost of importing and building it, and the cost per text (median of repeated runs
over all phrasings, interleaved). "product path" is TextReader as classify.py calls it: normalisation, the
pack's regexes, the trigger pre-filter, ConText only when needed; "miss" bypasses its memo, "hit" is the
memoised call that repeated texts cost.

    make bench BENCH=text_context
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 30
MS_TARGET = re.compile(r"(?P<g0>multiple sclerosis)")

# (text, does it count as MS for this patient?)
PHRASINGS: list[tuple[str, bool]] = [
    ("MS ruled out", False), ("Multiple sclerosis ruled out", False), ("no evidence of multiple sclerosis", False),
    ("negative for MS", False), ("MS excluded", False), ("denies multiple sclerosis", False),
    ("Family history of multiple sclerosis (mother)", False), ("mother has MS", False), ("FHx MS", False),
    ("MS in maternal aunt", False), ("if MS is confirmed", False),
    ("possible MS", True), ("r/o MS", True), ("probable multiple sclerosis", True), ("suspected MS", True),
    ("MS not excluded", True), ("relapsing-remitting multiple sclerosis", True), ("MULTIPLE   SCLEROSIS", True),
    ("Multiple sclerosis, relapsing", True), ("history of multiple sclerosis", True), ("RRMS", True),
]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    from ccsvi_cds.facts.mentions import TextReader, pipeline
    from ccsvi_cds.rulepack import load_pack

    ctx = load_pack(ROOT / "rules").manifest.text_context
    assert ctx is not None, "rules/pack.yaml has no text_context section"
    reader = TextReader({"condition": MS_TARGET}, ctx)
    normalised = [reader.normalise(t) for t, _ in PHRASINGS]

    build: dict[str, float] = {}
    build["medspaCy ConText (as mentions.py builds it)"] = _timed(lambda: pipeline(reader.rules))
    nlp = pipeline(reader.rules)

    def medspacy_default() -> object:
        from loguru import logger

        logger.disable("PyRuSH")
        import medspacy  # type: ignore[import-untyped]

        return medspacy.load()

    build["medspaCy default pipeline (PyRuSH sentences)"] = _timed(medspacy_default)
    default_nlp = medspacy_default()

    def negspacy_build() -> object:
        import spacy
        from negspacy.negation import Negex  # type: ignore[import-untyped]  # noqa: F401 (registers "negex")
        from negspacy.termsets import termset  # type: ignore[import-untyped]

        neg = spacy.blank("en")
        neg.add_pipe("sentencizer")
        neg.add_pipe("negex", config={"neg_termset": termset("en_clinical").get_patterns()})
        return neg

    build["negspacy (NegEx, en_clinical)"] = _timed(negspacy_build)
    neg_nlp = negspacy_build()

    def with_targets(lang: object, text: str, group: str | None) -> object:
        doc = lang.make_doc(text)  # type: ignore[attr-defined]
        spans = [doc.char_span(m.start(), m.end(), label="MS", alignment_mode="expand")
                 for m in MS_TARGET.finditer(text)]
        if group:
            doc.spans[group] = spans
        else:
            doc.ents = spans
        return lang(doc)  # type: ignore[operator]

    def medspacy_reads(text: str) -> bool:
        return bool(reader.usable("condition", text))

    def default_reads(text: str) -> bool:
        norm = reader.normalise(text)
        doc = with_targets(default_nlp, norm, None)
        bad = {"is_negated", "is_family", "is_hypothetical"}
        return any(not any(getattr(e._, a) for a in bad) for e in doc.ents)  # type: ignore[attr-defined]

    def negspacy_reads(text: str) -> bool:
        doc = with_targets(neg_nlp, reader.normalise(text), None)
        return any(not e._.negex for e in doc.ents)  # type: ignore[attr-defined]

    readers = {"medspaCy ConText + pack rules (product)": medspacy_reads,
               "medspaCy default pipeline, no pack rules": default_reads,
               "negspacy en_clinical": negspacy_reads}
    print(f"{'phrasing':48s} {'MS?':5s} " + " ".join(f"{n[:22]:>22s}" for n in readers))
    right = dict.fromkeys(readers, 0)
    for text, expected in PHRASINGS:
        got = {n: fn(text) for n, fn in readers.items()}
        for n, value in got.items():
            right[n] += value == expected
        marks = " ".join(f"{('yes' if v else 'no') + ('' if v == expected else ' WRONG'):>22s}" for v in got.values())
        print(f"{text:48s} {'yes' if expected else 'no':5s} {marks}")
    print()
    for n, count in right.items():
        print(f"{n:48s} {count}/{len(PHRASINGS)} right")

    per_text: dict[str, Callable[[str], object]] = {
        "ConText pipeline alone (mentions.py's)": lambda t: with_targets(nlp, t, "ccsvi_targets"),
        "medspaCy default pipeline (PyRuSH)": lambda t: with_targets(default_nlp, t, None),
        "negspacy pipeline": lambda t: with_targets(neg_nlp, t, None),
        "product path, memo miss": reader._read,
        "product path, memo hit": lambda t: reader.usable("condition", t),
    }
    samples: dict[str, list[float]] = {n: [] for n in per_text}
    for _ in range(ROUNDS):
        for n, fn in per_text.items():
            t0 = time.perf_counter_ns()
            for text in normalised:
                fn(text)
            samples[n].append((time.perf_counter_ns() - t0) / 1000 / len(normalised))
    print()
    print(f"{'one-off: import + build':48s} {'s':>8s}")
    for n, seconds in build.items():
        print(f"{n:48s} {seconds:8.2f}")
    print(f"{'per text (median of ' + str(ROUNDS) + ' rounds)':48s} {'us':>8s}")
    for n, s in samples.items():
        print(f"{n:48s} {statistics.median(s):8.1f}")
    plain = sum(1 for t in normalised if not (reader.triggers and reader.triggers.search(t)))
    print(f"phrasings the trigger pre-filter answers without ConText: {plain}/{len(normalised)}")


if __name__ == "__main__":
    main()
