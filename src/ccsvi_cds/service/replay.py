"""JWT `jti` replay cache shared by all worker processes (a small SQLite file beside the decision store).

An in-process cache alone would let a token replayed to the other worker through; SQLite with a primary
key on (iss, jti) makes "first use wins" atomic across processes. Entries are dropped once expired. Its own
file, so that the check (on the event loop) never waits for the decision writer's batch commits.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def replay_path(db_path: Path) -> Path:
    """`service.sqlite3` -> `service.jti.sqlite3`."""
    return db_path.with_name(db_path.stem + ".jti" + (db_path.suffix or ".sqlite3"))


class ReplayCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jwt_seen (iss TEXT NOT NULL, jti TEXT NOT NULL, exp INTEGER NOT NULL,"
            " PRIMARY KEY (iss, jti)) WITHOUT ROWID"
        )
        self._next_purge = 0.0

    def first_use(self, iss: str, jti: str, exp: int) -> bool:
        """Record (iss, jti); False if it was already recorded (a replay)."""
        now = time.time()
        if now >= self._next_purge:
            self._db.execute("DELETE FROM jwt_seen WHERE exp < ?", (int(now) - 3600,))
            self._next_purge = now + 60
        cur = self._db.execute("INSERT OR IGNORE INTO jwt_seen (iss, jti, exp) VALUES (?, ?, ?)", (iss, jti, exp))
        return cur.rowcount == 1

    def close(self) -> None:
        self._db.close()
