"""Structured (one JSON object per line) logs. Callers pass only ids, counts and codes as `extra=`:
never resource content, patient data, JWTs or access tokens."""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO

import orjson

LOGGER_NAME = "ccsvi_cds.service"
log = logging.getLogger(LOGGER_NAME)

MAX_VALUE_CHARS = 200  # a client value is logged at most this long, with control characters escaped

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_line(record.created, record.levelname.lower(), record.name, record.getMessage(), vars(record))


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def json_line(created: float, level: str, logger: str, msg: str, fields: Mapping[str, object]) -> str:
    """One log line: ts, level, logger, msg, then the caller's fields (LogRecord attributes left out)."""
    global _second
    whole, second = int(created), _second  # one read: other threads log too
    if second[0] != whole:  # strftime once per second, not per line
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    out: dict[str, object] = {
        "ts": f"{second[1]}.{int((created - whole) * 1000):03d}Z",
        "level": level,
        "logger": logger,
        "msg": clip(msg),
    }
    for key, value in fields.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        kind = type(value)  # `bounded`, with its commonest cases (an access line's ids and counts) first
        plain = kind is int or kind is float or kind is bool or value is None
        if plain or (isinstance(value, str) and len(value) <= MAX_VALUE_CHARS and value.isprintable()):
            out[key] = value
        else:
            out[key] = bounded(value)
    return orjson.dumps(out, default=str).decode()


def record(msg: str, fields: dict[str, object]) -> None:
    """`log.info(msg, extra=fields)`. When the service's own handler (see `setup`) is the only one of its
    logger, the line is formatted straight from `fields`: building a LogRecord (caller lookup, thread and
    process names) cost more than the line itself, on every request. Anywhere else (an embedding host's
    handlers, pytest's caplog) it is an ordinary log record."""
    handler = _handler
    if handler is not None and log.handlers == [handler] and not log.filters and not handler.filters \
            and handler.level <= logging.INFO and log.isEnabledFor(logging.INFO):
        handler.add(json_line(time.time(), "info", LOGGER_NAME, msg, fields))
    else:
        log.info(msg, extra=fields)


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """At most `limit` characters, non-printable ones (NUL, CR, LF, escapes) as `\\xNN`/`\\uNNNN`."""
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in head)
    return head if len(text) <= limit else f"{head}...(+{len(text) - limit} chars)"


def bounded(value: object, depth: int = 0) -> object:
    """A log field with every string clipped and containers bounded (at most 50 items, 3 levels)."""
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return [bounded(v, depth + 1) for v in value[:50]]
    if depth < 3 and isinstance(value, dict):
        return {clip(str(k), 60): bounded(v, depth + 1) for k, v in list(value.items())[:50]}
    return clip(str(value))


class BufferedHandler(logging.Handler):
    """Formats on the caller's thread, writes from a background thread every `interval` s in one write.

    A write per request on the event loop (stderr is line-buffered) stalls it when the disk is busy; a
    thread woken per record costs GIL hand-offs. Errors are written at once; the rest at most `interval` late.
    """

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        super().__init__()
        self._stream = stream
        self._lines: list[str] = []
        self._write_lock = threading.Lock()
        self._interval = interval
        threading.Thread(target=self._loop, name="log-writer", daemon=True).start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            self.handleError(record)
            return
        if record.levelno >= logging.ERROR:
            self.flush()

    def add(self, line: str) -> None:
        """A line already formatted (below ERROR: written with the next batch)."""
        self._lines.append(line)

    def flush(self) -> None:
        with self._write_lock:
            lines, self._lines = self._lines, []  # swap: appends from other threads go to the new list
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()


_handler: BufferedHandler | None = None


def setup(level: str = "info") -> None:
    """JSON lines on stderr for the service's logger and uvicorn's error logger (its access log is off)."""
    global _handler
    if _handler is None:
        _handler = BufferedHandler(sys.stderr)
        _handler.setFormatter(JsonFormatter())
    handler = _handler
    for name in (LOGGER_NAME, "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def flush() -> None:
    """Write buffered lines now (worker processes end with os._exit: atexit handlers do not run there)."""
    if _handler is not None:
        _handler.flush()
