"""Decision records and card feedback in one SQLite file (WAL; shared by the worker processes).

A decision record is what an auditor needs to trace a card back: hookInstance, a digest of the evaluated
input, the rule pack (name, version, digest) and the cards returned (uuid, rule id, indicator, order,
suggestion uuids, digest of the card JSON). Only identifiers are kept, never clinical text: no card text,
no resource content, no feedback comment (only whether there was one). Feedback is linked to its decision
through the card uuid at query time (view `feedback_decision`), so it does not matter which worker wrote
the decision. Identical feedback entries are stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .errors import Problem, ServiceError
from .models import FeedbackItem

SCHEMA = """
CREATE TABLE IF NOT EXISTS decision (
    id INTEGER PRIMARY KEY,
    hook_instance TEXT NOT NULL,
    service_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    created_at TEXT NOT NULL,
    patient_id TEXT,
    user_id TEXT,
    encounter_id TEXT,
    order_refs TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    pack_name TEXT NOT NULL,
    pack_version TEXT NOT NULL,
    pack_digest TEXT NOT NULL,
    issue_paths TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decision_hook_instance ON decision(hook_instance);
CREATE TABLE IF NOT EXISTS decision_card (
    card_uuid TEXT PRIMARY KEY,
    decision_id INTEGER NOT NULL REFERENCES decision(id),
    rule_id TEXT,
    indicator TEXT NOT NULL,
    order_ref TEXT,
    suggestion_uuids TEXT NOT NULL,
    card_digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    entry_digest TEXT NOT NULL UNIQUE,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    accepted_suggestions TEXT NOT NULL,
    override_system TEXT,
    override_code TEXT,
    override_display TEXT,
    has_user_comment INTEGER NOT NULL,
    outcome_timestamp TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
CREATE VIEW IF NOT EXISTS feedback_decision AS
    SELECT f.card_uuid, f.service_id, f.outcome, f.accepted_suggestions, f.override_system, f.override_code,
           f.has_user_comment, f.outcome_timestamp, f.received_at,
           c.rule_id, c.indicator, c.order_ref, c.card_digest,
           d.hook_instance, d.hook, d.input_digest, d.pack_name, d.pack_version, d.pack_digest,
           d.created_at AS decided_at
    FROM feedback f
    LEFT JOIN decision_card c ON c.card_uuid = f.card_uuid
    LEFT JOIN decision d ON d.id = c.decision_id;
"""


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _now() -> str:
    """The current UTC time as `datetime.isoformat(timespec="milliseconds")` writes it; the date and time of
    day are formatted once per second (per transaction, datetime cost more than the record's inserts)."""
    global _second
    now = time.time()
    whole, second = int(now), _second  # one read: two threads write (decisions and feedback)
    if second[0] != whole:
        second = _second = (whole, datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6])
    return f"{second[1]}.{int((now - whole) * 1000):03d}+00:00"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def canonical(value: Any) -> bytes:
    """The canonical JSON of `value` (sorted keys), the bytes `digest` hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(value: Any) -> str:
    """sha256 of the canonical JSON (sorted keys) of `value`."""
    return hashlib.sha256(canonical(value)).hexdigest()


@dataclass(frozen=True)
class CardRecord:
    uuid: str
    rule_id: str | None
    indicator: str
    order_ref: str | None
    suggestion_uuids: list[str]
    card_digest: str


@dataclass(frozen=True)
class DecisionRecord:
    hook_instance: str
    service_id: str
    hook: str
    patient_id: str | None
    user_id: str | None
    encounter_id: str | None
    order_refs: list[str]
    input_digest: str
    pack: dict[str, str]
    issue_paths: list[str]
    cards: list[CardRecord]


@dataclass(frozen=True)
class FeedbackResult:
    stored: int
    duplicates: int
    unmatched: int

    def to_json(self) -> dict[str, int]:
        return {"stored": self.stored, "duplicates": self.duplicates, "unmatchedCards": self.unmatched}


log = logging.getLogger("ccsvi_cds.service")
MAX_WAIT_S = 2.0  # for the other worker's write lock, before a decision counts as not writable
CHECKPOINT_INTERVAL_S = 1.0


class Store:
    """Two connections: decisions commit with synchronous=NORMAL (hot path; in WAL mode a committed
    transaction survives a crash of the process, SIGKILL included, though not of the OS), feedback with
    synchronous=FULL (rare; survives power loss too).

    A decision is committed before its cards are answered (`record_decision` returns once it is): a card the
    EHR received always has its record. Group commit on the event loop: the records of all requests that
    reach this point in one turn of the loop are committed together, by one callback, in one transaction.
    A WAL commit without fsync takes tens of microseconds; what could stall the loop is kept off it: the
    connection never waits for the other worker's write lock (it retries after an asyncio pause, as the
    replay cache does), and WAL checkpoints (which fsync) run on a thread with their own connection.
    A thread hand-off per commit was tried first: it cost 20% of throughput in GIL switches.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # the feedback connection, used from worker threads
        self._decisions = self._connect("NORMAL", timeout=0)  # used on the event-loop thread only
        self._decisions.executescript(SCHEMA)
        self._decisions.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints: see _checkpoint_loop
        self._feedback = self._connect("FULL")
        self._pending: list[tuple[DecisionRecord, asyncio.Future[None]]] = []
        self._commit_scheduled = False
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="wal-checkpoint", daemon=True)
        self._checkpointer.start()

    async def record_decision(self, rec: DecisionRecord) -> None:
        """Return once `rec` is committed; ServiceError 503 if it cannot be (no cards without their record)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((rec, done))
        if not self._commit_scheduled:
            self._commit_scheduled = True
            loop.call_soon(self._commit_pending, loop, time.monotonic() + MAX_WAIT_S, 0.0002)
        try:
            await done  # cancelled (client gone): the record is committed all the same
        except Exception as exc:
            raise ServiceError(503, Problem("the decision record could not be written, so no cards are "
                                            "returned; retry later", code="transient")) from exc

    def _commit_pending(self, loop: asyncio.AbstractEventLoop | None, deadline: float, pause: float) -> None:
        """Commit every pending record in one transaction, then wake their requests (loop None: no retry)."""
        batch = self._pending
        if not batch:
            self._commit_scheduled = False
            return
        error: Exception | None = None
        try:
            self.record_decisions([rec for rec, _ in batch])
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if busy and loop is not None and time.monotonic() < deadline:  # the other worker is writing
                loop.call_later(pause, self._commit_pending, loop, deadline, min(pause * 2, 0.005))
                return
            error = exc
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request as a 503
            error = exc
        self._pending = []
        self._commit_scheduled = False
        if error is not None:
            log.error("decision records not written", extra={"count": len(batch), "error": type(error).__name__})
        for _, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def flush(self) -> None:
        """Nothing to wait for: every decision is committed before its answer (kept for existing callers)."""

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database now and then, off the event loop (the copy fsyncs)."""
        db = self._connect("NORMAL")
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # e.g. busy: the next round retries
                    log.warning("WAL checkpoint skipped", extra={"error": type(exc).__name__})
        finally:
            db.close()

    def _connect(self, synchronous: str, timeout: float = 10) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def record_decisions(self, recs: list[DecisionRecord]) -> None:
        db = self._decisions
        db.execute("BEGIN IMMEDIATE")
        try:
            now = _now()  # one transaction, one instant
            for rec in recs:
                self._insert_decision(db, rec, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _insert_decision(db: sqlite3.Connection, rec: DecisionRecord, now: str) -> None:
        cur = db.execute(
            "INSERT INTO decision (hook_instance, service_id, hook, created_at, patient_id, user_id,"
            " encounter_id, order_refs, input_digest, pack_name, pack_version, pack_digest, issue_paths)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.hook_instance, rec.service_id, rec.hook, now, rec.patient_id, rec.user_id,
             rec.encounter_id, _json(rec.order_refs), rec.input_digest, rec.pack["name"],
             rec.pack["version"], rec.pack["digest"], _json(rec.issue_paths)),
        )
        if rec.cards:
            db.executemany(
                "INSERT INTO decision_card (card_uuid, decision_id, rule_id, indicator, order_ref,"
                " suggestion_uuids, card_digest) VALUES (?,?,?,?,?,?,?)",
                [(c.uuid, cur.lastrowid, c.rule_id, c.indicator, c.order_ref, _json(c.suggestion_uuids),
                  c.card_digest) for c in rec.cards],
            )

    def record_feedback(self, service_id: str, items: list[FeedbackItem]) -> FeedbackResult:
        rows = []
        for item in items:
            accepted = sorted(s.id for s in item.acceptedSuggestions or [])
            reason = item.overrideReason.reason if item.overrideReason else None
            comment = item.overrideReason.userComment if item.overrideReason else None
            ts = item.outcomeTimestamp.isoformat() if item.outcomeTimestamp else None
            key = digest([service_id, item.card, item.outcome, accepted,
                          [reason.system, reason.code] if reason else None, ts,
                          hashlib.sha256(comment.encode()).hexdigest() if comment else None])
            rows.append((key, service_id, item.card, item.outcome, _json(accepted),
                         reason.system if reason else None, reason.code if reason else None,
                         reason.display if reason else None, int(bool(comment)), ts, _now()))
        with self._lock:
            db = self._feedback
            db.execute("BEGIN IMMEDIATE")
            try:
                stored = 0
                for row in rows:
                    stored += db.execute(
                        "INSERT OR IGNORE INTO feedback (entry_digest, service_id, card_uuid, outcome,"
                        " accepted_suggestions, override_system, override_code, override_display,"
                        " has_user_comment, outcome_timestamp, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        row).rowcount
                cards = sorted({item.card for item in items})
                marks = ",".join("?" * len(cards))
                known = db.execute(f"SELECT count(*) FROM decision_card WHERE card_uuid IN ({marks})",
                                   cards).fetchone()[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return FeedbackResult(stored=stored, duplicates=len(rows) - stored, unmatched=len(cards) - known)

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(timeout=10)
        if self._pending:  # shutting down between a request and its commit callback
            self._decisions.execute("PRAGMA busy_timeout=10000")
            self._commit_pending(None, 0.0, 0.0)
        with self._lock:
            self._decisions.close()
            self._feedback.close()
