"""`ccsvi-cds feedback report --db FILE --out report.html`: how often each card is shown, accepted, overridden.

CDS governance committees judge an alert by these rates and by the reasons clinicians give for overriding
it. The page is built from the service's SQLite file (read-only) and is self-contained like the audit's
report: inline CSS and SVG, no script, no network.

Columns read (schema of `feedback_store.py`): decision(id, created_at, pack_name, pack_version,
pack_digest); decision_card(card_uuid, decision_id, rule_id, indicator); feedback(card_uuid, outcome,
accepted_suggestions, override_code, override_display, outcome_timestamp, received_at).

A card's outcome is its latest feedback entry (by outcomeTimestamp, else time received): a clinician who
first overrode and then accepted counts as accepted. The month is the month the card was shown (UTC).
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
from jinja2 import Environment, PackageLoader, select_autoescape

OUTCOMES = ("accepted", "overridden", "none")


@dataclass(frozen=True)
class ShownCard:
    """One card the service returned, with the latest feedback on it (outcome "none" without feedback)."""

    rule: str
    month: str
    pack: str
    outcome: str
    accepted_suggestions: int
    reason: str | None


@dataclass
class Tally:
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    none: int = 0
    suggestions: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, card: ShownCard) -> None:
        self.shown += 1
        setattr(self, card.outcome, getattr(self, card.outcome) + 1)
        self.suggestions += card.accepted_suggestions
        if card.outcome == "overridden":
            self.reasons[card.reason or "no reason given"] += 1

    def rate(self, part: int) -> str:
        return f"{100 * part / self.shown:.0f}%" if self.shown else "-"


@dataclass
class FeedbackStats:
    total: Tally
    by_rule: dict[str, Tally]
    by_rule_month: dict[str, dict[str, Tally]]
    by_month: dict[str, Tally]
    by_pack: dict[str, Tally]
    unmatched_feedback: int


class ReportError(Exception):
    """The database cannot be read as the service's decision store."""


def read_cards(db_path: Path) -> tuple[list[ShownCard], int]:
    """(every card shown with its latest outcome, feedback entries whose card the store never recorded)."""
    if not db_path.is_file():
        raise ReportError(f"{db_path}: no such file")
    try:
        db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReportError(f"{db_path}: cannot open: {exc}") from exc
    try:
        cards = db.execute(
            "SELECT c.card_uuid, c.rule_id, d.created_at, d.pack_name, d.pack_version, d.pack_digest"
            " FROM decision_card c JOIN decision d ON d.id = c.decision_id").fetchall()
        feedback = db.execute(
            "SELECT card_uuid, outcome, accepted_suggestions, override_code, override_display,"
            " coalesce(outcome_timestamp, received_at) AS at, id FROM feedback ORDER BY card_uuid, at, id"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{db_path}: not a ccsvi-cds decision database ({exc})") from exc
    finally:
        db.close()
    latest = {row[0]: row for row in feedback}  # ordered by time: the last one wins
    shown = []
    for uuid, rule, created, pack_name, pack_version, pack_digest in cards:
        fb = latest.get(uuid)
        outcome = fb[1] if fb and fb[1] in OUTCOMES else "none"
        shown.append(ShownCard(
            rule=rule or "(no rule id)", month=_month(created),
            pack=f"{pack_name} {pack_version} ({pack_digest[:12]})", outcome=outcome,
            accepted_suggestions=len(orjson.loads(fb[2])) if fb and outcome == "accepted" else 0,
            reason=(fb[4] or fb[3]) if fb and outcome == "overridden" else None))
    known = {row[0] for row in cards}
    return shown, sum(1 for uuid in latest if uuid not in known)


def _month(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp).astimezone(UTC).strftime("%Y-%m")
    except (TypeError, ValueError):
        return "unknown"


def summarize(cards: list[ShownCard], unmatched: int) -> FeedbackStats:
    stats = FeedbackStats(Tally(), defaultdict(Tally), defaultdict(lambda: defaultdict(Tally)),
                          defaultdict(Tally), defaultdict(Tally), unmatched)
    for card in cards:
        for tally in (stats.total, stats.by_rule[card.rule], stats.by_rule_month[card.rule][card.month],
                      stats.by_month[card.month], stats.by_pack[card.pack]):
            tally.add(card)
    return stats


@dataclass(frozen=True)
class Segment:
    outcome: str
    value: int
    x: float
    y: float
    width: float
    height: float


def month_columns(by_month: dict[str, Tally], width: float = 860, height: float = 220) -> list[tuple[str, list[Segment]]]:
    """Stacked columns per month (accepted, overridden, no feedback), in an SVG of width x height."""
    months = sorted(by_month)
    if not months:
        return []
    top = max(t.shown for t in by_month.values()) or 1
    plot_h, step = height - 40, (width - 50) / len(months)
    out = []
    for i, month in enumerate(months):
        tally, y, segs = by_month[month], 10 + plot_h, []
        for outcome in OUTCOMES:
            h = plot_h * getattr(tally, outcome) / top
            y -= h
            segs.append(Segment(outcome, getattr(tally, outcome), 40 + i * step + step * 0.1, y, max(step * 0.8, 1), h))
        out.append((month, segs))
    return out


def rule_rows(by_rule: dict[str, Tally], width: float = 560, row: float = 28) -> list[tuple[str, float, list[Segment]]]:
    """Stacked horizontal bars per rule, most shown first."""
    top = max((t.shown for t in by_rule.values()), default=0) or 1
    out = []
    for i, (rule, tally) in enumerate(sorted(by_rule.items(), key=lambda kv: (-kv[1].shown, kv[0]))):
        x, segs = 0.0, []
        for outcome in OUTCOMES:
            w = (width - 60) * getattr(tally, outcome) / top
            segs.append(Segment(outcome, getattr(tally, outcome), x, i * row + 4, w, row - 8))
            x += w
        out.append((rule, i * row + 4, segs))
    return out


def render_report(stats: FeedbackStats, db_path: Path) -> str:
    env = Environment(loader=PackageLoader("ccsvi_cds.service", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("feedback_report.html.j2").render(
        s=stats, db=db_path.name, months=month_columns(stats.by_month), rules=rule_rows(stats.by_rule),
        generated=datetime.now(UTC).isoformat(timespec="seconds"))


def write_report(db_path: Path, out: Path) -> FeedbackStats:
    cards, unmatched = read_cards(db_path)
    stats = summarize(cards, unmatched)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(stats, db_path), encoding="utf-8")
    return stats


@click.group()
def feedback() -> None:
    """What clinicians did with the cards: reports from the service's decision records and feedback."""


@feedback.command()
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the service's SQLite file (db_path); opened read-only")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the HTML page to write")
def report(db_path: Path, out: Path) -> None:
    """Cards shown, accepted, overridden (and why) and left without feedback, per rule, month and pack version."""
    try:
        stats = write_report(db_path, out)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    t = stats.total
    click.echo(f"{t.shown} card(s) shown: {t.accepted} accepted, {t.overridden} overridden, {t.none} without "
               f"feedback; wrote {out}")
