"""Feedback: stored durably in SQLite, duplicates and batches, linked to the decision record, no PHI."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import service_payloads as p
from cdshooks_checks import cards_of, expressions, outcome
from service_harness import Service

SIGN = "/cds-services/ccsvi-order-sign"
FEEDBACK = SIGN + "/feedback"


@pytest.fixture(scope="module")
def svc(service_factory: Any) -> Service:
    return service_factory()


def db(svc: Service) -> sqlite3.Connection:
    conn = sqlite3.connect(svc.env["CCSVI_DB_PATH"])
    conn.row_factory = sqlite3.Row
    return conn


def accepted(card: dict[str, Any], ts: str = "2026-11-21T10:05:31Z") -> dict[str, Any]:
    return {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": ts,
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}


def overridden(card: dict[str, Any], comment: str | None = None) -> dict[str, Any]:
    reason: dict[str, Any] = {"reason": card["overrideReasons"][1]}
    if comment:
        reason["userComment"] = comment
    return {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:06:00Z",
            "overrideReason": reason}


def test_feedback_round_trip_survives_a_restart(svc: Service) -> None:
    req = p.order_sign()
    card = cards_of(svc.post(SIGN, req))[0]
    first = svc.post(FEEDBACK, {"feedback": [accepted(card)]})
    assert first.status_code == 200 and first.json() == {"stored": 1, "duplicates": 0, "unmatchedCards": 0}

    svc.restart()
    again = svc.post(FEEDBACK, {"feedback": [accepted(card)]})
    assert again.json() == {"stored": 0, "duplicates": 1, "unmatchedCards": 0}

    with db(svc) as conn:
        rows = conn.execute("SELECT * FROM feedback_decision WHERE card_uuid = ?", (card["uuid"],)).fetchall()
    assert len(rows) == 1
    row = rows[0]
    health = svc.client.get("/health").json()["rulePack"]
    assert row["outcome"] == "accepted"
    assert row["hook_instance"] == req["hookInstance"] and row["hook"] == "order-sign"
    assert row["rule_id"] == "venous-angioplasty-ms" and row["indicator"] == "warning"
    assert row["order_ref"] == "ServiceRequest/sr-ijv-pta"
    assert (row["pack_name"], row["pack_version"], row["pack_digest"]) == (health["name"], health["version"],
                                                                           health["digest"])
    assert len(row["input_digest"]) == 64 and len(row["card_digest"]) == 64
    assert card["suggestions"][0]["uuid"] in row["accepted_suggestions"]


def test_input_digest_identifies_the_evaluated_input(svc: Service) -> None:
    req = p.order_sign()
    changed = p.order_sign(prefetch=p.full_prefetch(conditions=p.five_conditions()[:4]))
    instances = [req["hookInstance"], str(uuid.uuid4()), changed["hookInstance"]]
    cards_of(svc.post(SIGN, req))
    cards_of(svc.post(SIGN, {**req, "hookInstance": instances[1]}))
    cards_of(svc.post(SIGN, changed))
    svc.post(FEEDBACK, {"feedback": [{"card": "x", "outcome": "accepted"}]})  # flushes queued decision records
    with db(svc) as conn:
        digest = dict(conn.execute("SELECT hook_instance, input_digest FROM decision WHERE hook_instance IN (?,?,?)",
                                   instances).fetchall())
    assert digest[instances[0]] == digest[instances[1]] != digest[instances[2]]


def test_card_digest_is_the_sha256_of_the_card_bytes_the_ehr_received(svc: Service) -> None:
    """Each card is sent as its canonical JSON (sorted keys), encoded once: an auditor checks a record's
    card_digest against the response bytes as received, without re-encoding the card."""
    resp = svc.post(SIGN, p.order_sign())
    cards = cards_of(resp)
    with db(svc) as conn:
        stored = dict(conn.execute("SELECT card_uuid, card_digest FROM decision_card").fetchall())
    assert cards
    for card in cards:
        sent = orjson.dumps(card, option=orjson.OPT_SORT_KEYS)
        assert sent in resp.content
        assert hashlib.sha256(sent).hexdigest() == stored[card["uuid"]]


def test_batches_and_duplicates_inside_a_batch(svc: Service) -> None:
    cards = [cards_of(svc.post(SIGN, p.order_sign()))[0] for _ in range(3)]
    batch = [accepted(cards[0]), overridden(cards[1]), accepted(cards[0]), overridden(cards[2])]
    assert svc.post(FEEDBACK, {"feedback": batch}).json() == {"stored": 3, "duplicates": 1, "unmatchedCards": 0}
    assert svc.post(FEEDBACK, {"feedback": batch}).json() == {"stored": 0, "duplicates": 4, "unmatchedCards": 0}


def test_feedback_on_unknown_cards_is_kept_but_counted(svc: Service) -> None:
    item = {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
            "outcomeTimestamp": "2020-12-11T00:00:00Z"}
    assert svc.post(FEEDBACK, {"feedback": [item]}).json()["unmatchedCards"] == 1


def test_no_phi_and_no_comment_text_in_the_database(svc: Service) -> None:
    card = cards_of(svc.post(SIGN, p.order_sign()))[0]
    comment = "Patient Jane Roe insists, discussed at length"
    assert svc.post(FEEDBACK, {"feedback": [overridden(card, comment)]}).json()["stored"] == 1
    with db(svc) as conn:
        row = conn.execute("SELECT has_user_comment, override_code FROM feedback WHERE card_uuid = ?",
                           (card["uuid"],)).fetchone()
        assert row["has_user_comment"] == 1 and row["override_code"] == card["overrideReasons"][1]["code"]
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    raw = b"".join(f.read_bytes() for f in Path(svc.env["CCSVI_DB_PATH"]).parent.glob("service.sqlite3*"))
    for text in ("Jane Roe", "sclerosis", "Internal jugular", "Transluminal", card["summary"]):
        assert text.encode() not in raw


@pytest.mark.parametrize("body, expression", [
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": [{"outcome": "accepted", "outcomeTimestamp": "2020-12-11T00:00:00Z"}]}, "feedback[0].card"),
    ({"feedback": [{"card": "x", "outcome": "maybe"}]}, "feedback[0].outcome"),
    ({"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "yesterday"}]},
     "feedback[0].outcomeTimestamp"),
    ({"feedback": [{"card": "x", "outcome": "accepted", "acceptedSuggestions": [{}]}]},
     "feedback[0].acceptedSuggestions[0].id"),
])
def test_malformed_feedback_is_located(svc: Service, body: dict[str, Any], expression: str) -> None:
    assert expression in expressions(outcome(svc.post(FEEDBACK, body), 400))


def test_feedback_for_an_unknown_service_is_404(svc: Service) -> None:
    outcome(svc.post("/cds-services/nope/feedback", {"feedback": []}), 404)
