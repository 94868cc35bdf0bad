"""Cards as the service returns them: a fresh uuid each (for feedback), no empty values, and the record
of what was returned (ids and digests only) for the decision log."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from ccsvi_cds.evaluate import Finding

from .feedback_store import CardRecord, digest


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def prune_top(card: dict[str, Any]) -> dict[str, Any]:
    """A copy of `card` without empty top-level values (the card builder keeps nested parts non-empty;
    the tests check whole responses). Cheap enough for every card on the hot path."""
    return {k: v for k, v in card.items() if not _empty(v)}


def finalize(findings: list[Finding], legacy_delete_resource: bool = False
             ) -> tuple[list[dict[str, Any]], list[CardRecord]]:
    """Cards to send (with `uuid`) and their records."""
    cards: list[dict[str, Any]] = []
    records: list[CardRecord] = []
    for finding in findings:
        card = prune_top(finding.card)
        card["uuid"] = str(uuid.uuid4())
        if legacy_delete_resource and card.get("suggestions"):
            card["suggestions"] = copy.deepcopy(card["suggestions"])
            for suggestion in card["suggestions"]:
                for action in suggestion.get("actions") or []:
                    if action.get("type") == "delete" and "resourceId" in action and "resource" not in action:
                        action["resource"] = action["resourceId"]  # CDS Hooks 1.0 named the target here
        records.append(CardRecord(
            uuid=card["uuid"],
            rule_id=finding.rule_id,
            indicator=finding.indicator,
            order_ref=finding.order_ref,
            suggestion_uuids=[s["uuid"] for s in card.get("suggestions") or [] if "uuid" in s],
            card_digest=digest(card),
        ))
        cards.append(card)
    return cards, records
