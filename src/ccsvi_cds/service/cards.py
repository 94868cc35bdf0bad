"""Cards as the service returns them: a fresh uuid each (for feedback), no empty values, and the record
of what was returned (ids and digests only) for the decision log."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .feedback_store import CardRecord, digest


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def prune_top(card: dict[str, Any]) -> dict[str, Any]:
    """A copy of `card` without empty top-level values (the card builder keeps nested parts non-empty;
    the tests check whole responses). Cheap enough for every card on the hot path."""
    return {k: v for k, v in card.items() if not _empty(v)}


def _delete_target(card: dict[str, Any]) -> str | None:
    for suggestion in card.get("suggestions") or []:
        for action in suggestion.get("actions") or []:
            if action.get("type") == "delete" and isinstance(action.get("resourceId"), str):
                return action["resourceId"]
    return None


def finalize(raw_cards: list[dict[str, Any]], order_refs: list[str | None] | None = None,
             legacy_delete_resource: bool = False) -> tuple[list[dict[str, Any]], list[CardRecord]]:
    """Cards to send (with `uuid`) and their records. `order_refs[i]` names the order card i is about."""
    cards: list[dict[str, Any]] = []
    records: list[CardRecord] = []
    for i, raw in enumerate(raw_cards):
        card = prune_top(raw)
        card["uuid"] = str(uuid.uuid4())
        if legacy_delete_resource and card.get("suggestions"):
            card["suggestions"] = copy.deepcopy(card["suggestions"])
            for suggestion in card["suggestions"]:
                for action in suggestion.get("actions") or []:
                    if action.get("type") == "delete" and "resourceId" in action and "resource" not in action:
                        action["resource"] = action["resourceId"]  # CDS Hooks 1.0 named the target here
        topic = (card.get("source") or {}).get("topic") or {}
        ref = order_refs[i] if order_refs and i < len(order_refs) and order_refs[i] else _delete_target(card)
        records.append(CardRecord(
            uuid=card["uuid"],
            rule_id=topic.get("code"),
            indicator=str(card.get("indicator", "")),
            order_ref=ref,
            suggestion_uuids=[s["uuid"] for s in card.get("suggestions") or [] if "uuid" in s],
            card_digest=digest(card),
        ))
        cards.append(card)
    return cards, records
