"""report.html: one self-contained page (inline CSS and SVG, no script, no network) for auditors.

Charts are drawn as SVG here in Python rather than by a JavaScript library: the page must open offline,
years later, in whatever browser the auditor has, and print well.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from .outputs import FindingStats

TOP_N = 25


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


def month_range(months: Counter[str]) -> list[tuple[str, int]]:
    """Every month from the first to the last finding (zeros included, so gaps are visible)."""
    known = sorted(m for m in months if m != "unknown" and len(m) == 7 and m[4] == "-")
    if not known:
        return []
    y, m = int(known[0][:4]), int(known[0][5:])
    ey, em = int(known[-1][:4]), int(known[-1][5:])
    out: list[tuple[str, int]] = []
    while (y, m) <= (ey, em) and len(out) < 1200:
        key = f"{y:04d}-{m:02d}"
        out.append((key, months.get(key, 0)))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def time_bars(series: list[tuple[str, int]], width: float = 860, height: float = 220) -> list[Bar]:
    """Vertical bars for the over-time chart, in an SVG of ``width`` x ``height`` (30 px bottom axis)."""
    if not series:
        return []
    top = max(v for _, v in series) or 1
    plot_h = height - 40
    step = (width - 50) / len(series)
    bars = []
    for i, (label, value) in enumerate(series):
        h = plot_h * value / top
        bars.append(Bar(label, value, 40 + i * step + step * 0.1, 10 + plot_h - h, max(step * 0.8, 1), h))
    return bars


def rule_bars(counts: Mapping[str, int], width: float = 290, row: float = 28) -> list[Bar]:
    top = max(counts.values(), default=0) or 1
    return [Bar(rule, n, 0, i * row + 4, max((width - 60) * n / top, 2), row - 8)
            for i, (rule, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))]


def _top(counter: Counter[str], names: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"ref": ref, "name": names.get(ref, ""), "count": n} for ref, n in rows[:TOP_N]]


def render_report(summary: Mapping[str, Any], stats: FindingStats, error_kinds: Mapping[str, int]) -> str:
    env = Environment(loader=PackageLoader("ccsvi_cds.audit", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    series = month_range(stats.by_month)
    tbars = time_bars(series)
    return env.get_template("report.html.j2").render(
        s=summary,
        stats=stats,
        time_bars=tbars,
        label_every=max(1, len(tbars) // 12),
        time_max=max((b.value for b in tbars), default=0),
        unknown_month=stats.by_month.get("unknown", 0),
        rule_bars=rule_bars(summary["findings"]["byRule"]),
        requesters=_top(stats.by_requester, stats.names),
        organizations=_top(stats.by_organization, stats.names),
        error_kinds=sorted(error_kinds.items(), key=lambda kv: (-kv[1], kv[0])),
    )


def write_report(path: Path, summary: Mapping[str, Any], stats: FindingStats,
                 error_kinds: Mapping[str, int]) -> None:
    path.write_text(render_report(summary, stats, error_kinds), encoding="utf-8")
