"""Showing an author the actual text beside the text a test case expected."""

from __future__ import annotations

from difflib import SequenceMatcher


def closest_passage(expected: str, text: str, width: int = 200) -> str:
    """The line of `text` that shares the longest run of characters with `expected` (cut to `width`)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return text

    def run(line: str) -> tuple[int, int, int]:
        m = SequenceMatcher(None, expected, line, autojunk=False).find_longest_match(0, len(expected), 0, len(line))
        return m.size, m.b, -len(line)

    best = max(lines, key=run)
    if len(best) <= width:
        return best
    _, at, _ = run(best)
    start = max(0, min(at - width // 3, len(best) - width))
    return ("..." if start else "") + best[start:start + width] + ("..." if start + width < len(best) else "")
