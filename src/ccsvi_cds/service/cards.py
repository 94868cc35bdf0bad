"""Cards as the service returns them: a fresh uuid each (for feedback), no empty values, and the record
of what was returned (ids and digests only) for the decision log.

Each card is encoded once, as canonical JSON (sorted keys): those bytes go into the response and their
sha256 is the record's card_digest, so an auditor can check a digest against the bytes the EHR received.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any

from ccsvi_cds.evaluate import Finding

from .feedback_store import CardRecord, canonical


def prune_top(card: dict[str, Any]) -> dict[str, Any]:
    """A copy of `card` without empty top-level values (None, "", [], {}; the card builder keeps nested parts
    non-empty; the tests check whole responses). Cheap enough for every card on the hot path."""
    return {k: v for k, v in card.items() if v is not None and v != "" and v != [] and v != {}}


def finalize(findings: list[Finding], legacy_delete_resource: bool = False
             ) -> tuple[list[bytes], list[CardRecord]]:
    """Cards to send (with `uuid`), each as its canonical JSON, and their records."""
    cards: list[bytes] = []
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
        encoded = canonical(card)
        records.append(CardRecord(
            uuid=card["uuid"],
            rule_id=finding.rule_id,
            indicator=finding.indicator,
            order_ref=finding.order_ref,
            suggestion_uuids=[s["uuid"] for s in card.get("suggestions") or [] if "uuid" in s],
            card_digest=hashlib.sha256(encoded).hexdigest(),
        ))
        cards.append(encoded)
    return cards, records


def response_body(cards: list[bytes]) -> bytes:
    """The hook response `{"cards": [...]}` around cards already encoded by `finalize`."""
    return b'{"cards":[' + b",".join(cards) + b"]}"
