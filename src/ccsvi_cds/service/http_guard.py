"""Connection-level limits uvicorn's httptools protocol does not have: request-head size and header count,
a deadline for the request head, and the per-worker backlog a request arrives into (for load shedding).

httptools buffers a header value whole before handing it over, so the size is also bounded where bytes
arrive (`data_received`): a 16 MiB `Authorization` header is refused after `max_header_bytes` (plus at most
a read or two), not read whole.
A connection that opens and never completes its request head (slowloris) is closed after
`header_timeout_s`; idle keep-alive connections are closed by uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .settings import ServiceSettings

BACKLOG_KEY = "ccsvi.backlog"  # scope key: requests of this worker in progress when this one arrived


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing; answered 431 by `send_400_response`."""


@functools.cache
def _limits() -> tuple[int, int, float]:
    s = ServiceSettings()  # the worker's settings (environment / config file), read once
    return s.max_header_bytes, s.max_headers, s.header_timeout_s


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_bytes, self._max_headers, self._head_timeout = _limits()
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._parsed = 0
        self._boundary = False
        self._refusal: bytes | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        self._boundary = False
        super().data_received(data)
        # Bytes of a head still unfinished after this chunk (chunks are at most the transport's read size,
        # 256 KiB); a chunk in which a head began or ended is left to the exact per-header check.
        if self._in_head and not self._boundary and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._max_bytes:
                self._refuse(b"request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._boundary = True, True
        self._head_bytes = self._header_count = self._parsed = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._check(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._check(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head, self._boundary = False, True
        self.scope[BACKLOG_KEY] = len(self.tasks)  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._boundary = True, 0, True

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._write_refusal()
        else:
            super().send_400_response(msg)

    def _check(self, size: int, count: int) -> None:
        self._header_count += count
        self._parsed += size
        if self._header_count > self._max_headers:
            self._refusal = b"too many request headers"
            raise HeadTooLarge
        if self._parsed > self._max_bytes:
            self._refusal = b"request head too large"
            raise HeadTooLarge

    def _refuse(self, why: bytes) -> None:
        self._refusal = why
        self._write_refusal()

    def _write_refusal(self) -> None:
        if self.transport.is_closing():
            return
        why = self._refusal or b""
        self.transport.write(STATUS_LINE[431] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
                             + str(len(why)).encode() + b"\r\nconnection: close\r\n\r\n" + why)
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()
