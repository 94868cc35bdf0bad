"""`rules lint`: a card's figures must be the evidence's figures.

A percentage or a p-value in a card's summary or detail has to occur in the `result` of an evidence row the
card cites for it: the first run of `cite()` calls after it in the same paragraph or bullet (else the last run
before it there, else the card's `evidence` list). A simple textual check, but it catches the usual drift: a
number rounded, invented, or moved to the wrong trial.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ccsvi_cds.authoring.template_check import _position
from ccsvi_cds.rulepack.loader import RulePack
from ccsvi_cds.rulepack.model import Rule
from ccsvi_cds.rulepack.source import Problem, SourceDoc

FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*%|\b[pP]\s*[=<>≤]\s*0?\.\d+")
CITE = re.compile(r"cite\(\s*['\"]([a-z0-9-]+)['\"]\s*\)")
CITE_RUN = re.compile(r"(?:\{\{\s*cite\(\s*['\"][a-z0-9-]+['\"]\s*\)\s*\}\}\s*)+")
BLOCK_START = re.compile(r"^\s*(?:[-*+]\s|\d+\.\s|$)")


def normalize(figure: str) -> str:
    """`P = .062` and `p=0.062` are the same figure."""
    flat = re.sub(r"\s+", "", figure).lower()
    return re.sub(r"(?<=[=<>≤])\.", "0.", flat)


def figures_in(text: str) -> set[str]:
    return {normalize(m.group(0)) for m in FIGURE.finditer(text)}


def _blocks(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Paragraphs and bullets of markdown: (index of the first line, lines)."""
    start = 0
    block: list[str] = []
    for i, line in enumerate(lines):
        if BLOCK_START.match(line) and block:
            yield start, block
            start, block = i, []
        if not block:
            start = i
        block.append(line)
    if block:
        yield start, block


def _unsupported(text: str, cited: Iterable[str], pack: RulePack) -> bool:
    return normalize(text) not in figures_in(" ".join(pack.evidence[e].result for e in cited if e in pack.evidence))


def _cited_for(block: str, at: int, fallback: list[str]) -> list[str]:
    """The cite() run right after position `at` in the block, else the last one before it, else the fallback."""
    runs = [(m.start(), CITE.findall(m.group(0))) for m in CITE_RUN.finditer(block)]
    after = [ids for start, ids in runs if start >= at]
    before = [ids for start, ids in runs if start < at]
    return after[0] if after else before[-1] if before else fallback


def check_card_figures(pack: RulePack, rule: Rule, doc: SourceDoc) -> list[Problem]:
    card = rule.card
    problems: list[Problem] = []
    lines = doc.path.read_text(encoding="utf-8").splitlines() if doc.path.is_file() else []

    def warn(figure: str, cited: list[str], loc: tuple[object, ...], tline: int) -> None:
        line, col = _position(doc, loc, tline, figure, lines)
        problems.append(Problem(doc.display, line, col,
                                f"'{figure}' does not occur in the result of the evidence cited for it "
                                f"({', '.join(cited) or 'none'})",
                                "quote the figure as evidence.yaml gives it, cite the row that has it, or add "
                                "it to that row's result", "warning"))

    for m in FIGURE.finditer(card.summary):
        if _unsupported(m.group(0), card.evidence, pack):
            warn(m.group(0), list(card.evidence), ("card", "summary"), 1)
    for first, block in _blocks(card.detail.splitlines()):
        text = "\n".join(block)
        for m in FIGURE.finditer(text):
            cited = _cited_for(text, m.end(), list(card.evidence))
            if _unsupported(m.group(0), cited, pack):
                warn(m.group(0), cited, ("card", "detail"), first + text.count("\n", 0, m.start()) + 1)
    return problems
