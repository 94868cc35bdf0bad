"""`rules diff`: replay the same records through two versions of a pack and report the decisions that change.

Records are CDS Hooks requests (JSON files, or JSON arrays of requests) and audit input (FHIR Bundles,
resources, NDJSON / Bulk Data exports, read with the audit's own reader and evaluated as one data set, as
the audit does). Both sides run `Evaluator.evaluate`; nothing here decides anything clinical.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ccsvi_cds.evaluate import Evaluation, Evaluator
from ccsvi_cds.facts.fhir import Located
from ccsvi_cds.facts.records import is_hook_request
from ccsvi_cds.rulepack.loader import RulePack

FHIR_DATA = "FHIR data"  # the record name of the pooled audit input


class DiffInputError(Exception):
    """An input that cannot be replayed (missing, unreadable, neither a hook request nor FHIR)."""


@dataclass(frozen=True)
class Card:
    rule: str
    indicator: str
    summary: str
    detail: str


@dataclass
class Records:
    hook_requests: list[tuple[str, Any]] = field(default_factory=list)  # (name, request)
    fhir: list[Located] = field(default_factory=list)  # pooled audit input
    fhir_files: int = 0


def _hook_requests(path: Path) -> list[tuple[str, Any]] | None:
    """The hook requests in a .json file, or None if it holds FHIR (or anything else) instead."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if is_hook_request(data):
        return [(str(path), data)]
    if isinstance(data, list) and data and all(is_hook_request(d) for d in data):
        return [(f"{path}[{i}]", d) for i, d in enumerate(data)]
    return None


def collect(inputs: Sequence[str]) -> Records:
    """Sort inputs into hook requests and audit input; raise DiffInputError before any evaluation."""
    from ccsvi_cds.audit.sources import InputError, ReadTask, Record, discover, read_task

    records = Records()
    try:  # the audit's own discovery: folders, Bulk Data manifests, gzip, the same files an audit reads
        found = discover(inputs)
    except InputError as exc:
        raise DiffInputError(str(exc)) from exc
    files = []
    for f in found:
        hooks = _hook_requests(Path(f.path)) if f.kind == "json" and not f.gzip else None
        if hooks is not None:
            records.hook_requests.extend(hooks)
        else:
            files.append(f)
    if files:
        records.fhir_files = len(files)
        for idx, f in enumerate(files):
            for rec in read_task(files, ReadTask(idx)):
                if not isinstance(rec, Record):
                    continue  # bad lines: the audit reports them; a diff compares what both versions could read
                where = f.path + (f"#line{rec.line}" if rec.line else "") + \
                    (f"#entry{rec.entry}" if rec.entry is not None else "")
                records.fhir.append(Located(where, rec.resource))
    if not records.hook_requests and not records.fhir:
        raise DiffInputError("no CDS Hooks requests or FHIR data in the inputs")
    return records


def _file_of(source_path: str) -> str:
    """The file part of a pooled record's provenance (`path#line<n>#entry<n>`)."""
    return source_path.split("#", 1)[0]


Decisions = dict[tuple[str, str], list[Card]]  # (record, order) -> cards


def _decisions(name: str, evaluation: Evaluation, out: Decisions) -> None:
    for f in evaluation.findings:
        record = name if name != FHIR_DATA else _file_of(f.source_path)
        out.setdefault((record, f.order_ref), []).append(
            Card(f.rule_id, f.indicator, f.summary, str(f.card.get("detail", ""))))


def decide(evaluator: Evaluator, records: Records) -> tuple[Decisions, int, int]:
    """(decisions, orders evaluated, input issues) of one pack version over all records."""
    out: Decisions = {}
    orders = issues = 0
    evaluations: list[tuple[str, Evaluation]] = [(name, evaluator.evaluate_document(req, name))
                                                 for name, req in records.hook_requests]
    if records.fhir:
        evaluations.append((FHIR_DATA, evaluator.evaluate(records.fhir)))
    for name, evaluation in evaluations:
        _decisions(name, evaluation, out)
        orders += evaluation.orders_evaluated
        issues += len(evaluation.issues)
    return out, orders, issues


@dataclass(frozen=True)
class Change:
    record: str
    order: str
    kind: str  # "added" | "removed" | "changed"
    rule: str
    old: Card | None
    new: Card | None

    def lines(self) -> list[str]:
        if self.kind == "added":
            assert self.new is not None
            return [f"+ {self.new.indicator:<9} {self.rule}"]
        if self.kind == "removed":
            assert self.old is not None
            return [f"- {self.old.indicator:<9} {self.rule}"]
        assert self.old is not None and self.new is not None
        out = [f"~ {self.new.indicator:<9} {self.rule}"]
        if self.old.indicator != self.new.indicator:
            out.append(f"    indicator: {self.old.indicator} -> {self.new.indicator}")
        if self.old.summary != self.new.summary:
            out += [f"    - summary: {self.old.summary}", f"    + summary: {self.new.summary}"]
        if self.old.detail != self.new.detail:
            delta = difflib.unified_diff(self.old.detail.splitlines(), self.new.detail.splitlines(), lineterm="", n=0)
            out += [f"    {line}" for line in list(delta)[2:] if not line.startswith("@@")]
        return out

    def to_json(self) -> dict[str, Any]:
        def card(c: Card | None) -> dict[str, str] | None:
            return None if c is None else {"indicator": c.indicator, "summary": c.summary, "detail": c.detail}

        return {"record": self.record, "order": self.order, "change": self.kind, "rule": self.rule,
                "old": card(self.old), "new": card(self.new)}


@dataclass
class DiffReport:
    old: RulePack
    new: RulePack
    records: Records
    orders: tuple[int, int]
    issues: tuple[int, int]
    changes: list[Change]

    @property
    def changed_orders(self) -> list[tuple[str, str]]:
        return sorted({(c.record, c.order) for c in self.changes})

    def by_rule(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for c in self.changes:
            out.setdefault(c.rule, Counter())[c.kind] += 1
        return dict(sorted(out.items()))

    def text(self) -> str:
        def pack(p: RulePack) -> str:
            return f"{p.name} {p.version} ({p.digest[:12]})"

        lines = [f"old: {pack(self.old)}", f"new: {pack(self.new)}",
                 (f"replayed {len(self.records.hook_requests)} CDS Hooks request(s) and "
                  f"{len(self.records.fhir)} FHIR resource(s) from {self.records.fhir_files} file(s); "
                  f"orders evaluated: {self.orders[0]} old, {self.orders[1]} new")]
        if self.issues[0] or self.issues[1]:
            lines.append(f"input issues (skipped data): {self.issues[0]} old, {self.issues[1]} new")
        changed = self.changed_orders
        lines.append(f"decisions changed: {len(changed)} order(s)" if changed else "no decision changes")
        for record, order in changed:
            lines.append(f"  {record}: {order}")
            for c in self.changes:
                if (c.record, c.order) == (record, order):
                    lines.extend(f"    {line}" for line in c.lines())
        for rule, counts in self.by_rule().items():
            lines.append(f"  {rule}: {counts['added']} added, {counts['removed']} removed, "
                         f"{counts['changed']} changed")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def pack(p: RulePack) -> dict[str, str]:
            return {"name": p.name, "version": p.version, "digest": p.digest}

        return {"old": pack(self.old), "new": pack(self.new),
                "records": {"hookRequests": len(self.records.hook_requests), "fhirResources": len(self.records.fhir)},
                "ordersEvaluated": {"old": self.orders[0], "new": self.orders[1]},
                "changedOrders": len(self.changed_orders),
                "byRule": {r: dict(c) for r, c in self.by_rule().items()},
                "changes": [c.to_json() for c in self.changes]}


def compare(old: Decisions, new: Decisions) -> list[Change]:
    changes: list[Change] = []
    for key in sorted(set(old) | set(new)):
        before = {c.rule: c for c in old.get(key, [])}
        after = {c.rule: c for c in new.get(key, [])}
        for rule in sorted(set(before) | set(after)):
            a, b = before.get(rule), after.get(rule)
            if a == b:
                continue
            kind = "added" if a is None else "removed" if b is None else "changed"
            changes.append(Change(key[0], key[1], kind, rule, a, b))
    return changes


def diff_packs(old: RulePack, new: RulePack, inputs: Iterable[str]) -> DiffReport:
    records = collect(list(inputs))
    old_decisions, old_orders, old_issues = decide(Evaluator(old), records)
    new_decisions, new_orders, new_issues = decide(Evaluator(new), records)
    return DiffReport(old, new, records, (old_orders, new_orders), (old_issues, new_issues),
                      compare(old_decisions, new_decisions))
