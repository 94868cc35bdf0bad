"""JWT `jti` replay cache shared by all worker processes (a small SQLite file in /dev/shm, see `replay_path`).

An in-process cache alone would let a token replayed to the other worker through; SQLite with a primary
key on (iss, jti) makes "first use wins" atomic across processes. Entries are dropped once expired.

The check runs on the event loop, so it must never block it: SQLite's own busy handler sleeps (1, 2, 5 ms...)
while the other worker holds the write lock, which showed as tens of ms at p99. Here the connection does not
wait (timeout 0); a locked database is retried after an `asyncio.sleep`, letting other requests run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from pathlib import Path

MAX_WAIT_S = 2.0


def replay_path(db_path: Path) -> Path:
    """Where the replay cache lives: in shared memory (/dev/shm) when there is one, so that the check never
    waits for the disk; else beside the decision store. One cache per `db_path`, i.e. per service."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        key = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:16]
        return shm / f"ccsvi-cds-{key}.jti.sqlite3"
    return db_path.with_name(db_path.stem + ".jti" + (db_path.suffix or ".sqlite3"))


class ReplayCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        setup = sqlite3.connect(str(path), timeout=10, isolation_level=None)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute(
            "CREATE TABLE IF NOT EXISTS jwt_seen (iss TEXT NOT NULL, jti TEXT NOT NULL, exp INTEGER NOT NULL,"
            " PRIMARY KEY (iss, jti)) WITHOUT ROWID"
        )
        setup.close()
        self._db = sqlite3.connect(str(path), timeout=0, isolation_level=None, check_same_thread=False)
        # no fsync (a WAL checkpoint's fsync stalled the event loop on a busy disk): an OS crash may forget
        # recent jtis, whose tokens expire within minutes anyway; a process crash loses nothing
        self._db.execute("PRAGMA synchronous=OFF")
        self._next_purge = 0.0

    async def first_use(self, iss: str, jti: str, exp: int) -> bool:
        """Record (iss, jti); False if it was already recorded (a replay)."""
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + 60
            await self._execute("DELETE FROM jwt_seen WHERE exp < ?", (int(now) - 3600,))
        inserted = await self._execute("INSERT OR IGNORE INTO jwt_seen (iss, jti, exp) VALUES (?, ?, ?)",
                                       (iss, jti, exp))
        return inserted == 1

    async def _execute(self, sql: str, args: tuple[object, ...]) -> int:
        deadline = time.monotonic() + MAX_WAIT_S
        pause = 0.0002
        while True:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.005)

    def close(self) -> None:
        self._db.close()
