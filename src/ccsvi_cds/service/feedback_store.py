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
import queue
import sqlite3
import threading
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def digest(value: Any) -> str:
    """sha256 of the canonical JSON (sorted keys) of `value`."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
_STOP = object()
Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Store:
    """Two connections: decisions commit with synchronous=NORMAL (hot path; in WAL mode a committed
    transaction survives a crash of the process, SIGKILL included, though not of the OS), feedback with
    synchronous=FULL (rare; survives power loss too).

    A decision is committed before its cards are answered (`record_decision` returns once it is): a card the
    EHR received always has its record. The commit runs on a writer thread, never on the event loop, and
    is a group commit: the records of every request that arrives while one commit runs go into the next
    transaction together, so under load there are few commits, each of many records.
    """

    MAX_BATCH = 500

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._decisions = self._connect("NORMAL")
        self._decisions.executescript(SCHEMA)
        self._feedback = self._connect("FULL")
        self._queue: queue.Queue[tuple[object, Waiter | None]] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="decision-writer", daemon=True)
        self._writer.start()

    async def record_decision(self, rec: DecisionRecord) -> None:
        """Return once `rec` is committed; ServiceError 503 if it cannot be (no cards without their record)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((rec, (loop, done)))
        try:
            await done  # cancelled (client gone): the writer still commits the record
        except Exception as exc:
            raise ServiceError(503, Problem("the decision record could not be written, so no cards are "
                                            "returned; retry later", code="transient")) from exc

    def flush(self) -> None:
        """Wait until everything queued is written."""
        self._queue.join()

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]  # wait for the first; then take whatever queued meanwhile
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r, _ in batch if isinstance(r, DecisionRecord)]
            error: Exception | None = None
            try:
                if records:
                    self.record_decisions(records)
            except Exception as exc:  # noqa: BLE001 - keep the writer alive; the waiters get the error
                error = exc
                log.error("decision records not written", extra={"count": len(records), "error": type(exc).__name__})
            finally:
                _settle([w for _, w in batch if w is not None], error)
                for _ in batch:
                    self._queue.task_done()
            if any(r is _STOP for r, _ in batch):
                return

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=10, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def record_decisions(self, recs: list[DecisionRecord]) -> None:
        with self._lock:
            db = self._decisions
            db.execute("BEGIN IMMEDIATE")
            try:
                for rec in recs:
                    self._insert_decision(db, rec)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _insert_decision(db: sqlite3.Connection, rec: DecisionRecord) -> None:
        cur = db.execute(
            "INSERT INTO decision (hook_instance, service_id, hook, created_at, patient_id, user_id,"
            " encounter_id, order_refs, input_digest, pack_name, pack_version, pack_digest, issue_paths)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.hook_instance, rec.service_id, rec.hook, _now(), rec.patient_id, rec.user_id,
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
        self._queue.put((_STOP, None))
        self._writer.join(timeout=10)
        with self._lock:
            self._decisions.close()
            self._feedback.close()


def _settle(waiters: list[Waiter], error: Exception | None) -> None:
    """Wake the requests whose records were in the batch: one hand-off per event loop, not per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures, error)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _resolve(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
