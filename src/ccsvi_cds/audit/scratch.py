"""Private working directories (spill shards, staged outputs) that no other user can read and that an audit
killed with SIGKILL does not leave behind for long.

Each directory is created with mode 0700 and holds a ``lock`` file locked (flock) for the audit's lifetime;
the kernel drops the lock when the audit's processes die, however they die. Every audit starts by removing
the directories under its parent whose lock nobody holds: the leftovers of dead audits.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SPILL_PREFIX = "ccsvi-audit-spill-"
LEGACY_SPILL_PREFIX = ".ccsvi-audit-spill-"  # earlier versions spilled inside the output directory, unlocked
STAGING_PREFIX = ".audit-staging-"
LOCK_NAME = "lock"
_UNLOCKED_GRACE_SECONDS = 3600.0  # a directory without a lock file may be one being created right now


def default_workdir() -> Path:
    """Where spill goes unless --workdir says otherwise: the system's temporary directory."""
    return Path(tempfile.gettempdir())


def lock_held(lock: Path) -> bool:
    """Whether a live process holds ``lock`` (an exclusive flock, tried without waiting)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_stale(parent: Path, prefix: str, legacy: bool = False) -> list[Path]:
    """Remove ``parent/prefix*`` directories of dead audits; returns what was removed.

    ``legacy``: directories without a lock file are removed at once (earlier versions never made one)."""
    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return removed
    for path in candidates:
        lock = path / LOCK_NAME
        if lock.exists():
            if lock_held(lock):
                continue
        elif not legacy:
            try:
                if time.time() - path.stat().st_mtime < _UNLOCKED_GRACE_SECONDS:
                    continue
            except OSError:
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextmanager
def private_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new 0700 directory under ``parent``, locked while in use and removed on exit (any exception,
    Ctrl-C, SIGTERM); after a SIGKILL the next audit under the same parent removes it."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mode 0700, a name nobody else has
    fd = -1
    try:
        fd = os.open(path / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # inherited by forked workers: held until every one has exited
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
