"""Issue 10 item 6: overload and slow clients, over a real `ccsvi-cds serve` (uvicorn) with real sockets on
loopback: load is shed with 503 + Retry-After past the in-flight limit, request heads are capped in size and
header count (431, connection closed, memory flat), and idle or slow-header connections are closed."""

from __future__ import annotations

import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import service_payloads as p
from service_harness import GOOD_TOKEN, FakeFhir, Service

SIGN = "/cds-services/ccsvi-order-sign"
LIMITS = {"CCSVI_MAX_IN_FLIGHT": "4", "CCSVI_MAX_HEADER_BYTES": "8192", "CCSVI_MAX_HEADERS": "50",
          "CCSVI_HEADER_TIMEOUT_S": "1", "CCSVI_KEEPALIVE_TIMEOUT_S": "1", "CCSVI_BODY_TIMEOUT_S": "1"}


@pytest.fixture(scope="module")
def svc(service_factory: Any, fhir: FakeFhir) -> Service:
    return service_factory({**LIMITS, "CCSVI_WORKERS": "1", "CCSVI_ALLOW_FHIR_SERVERS": fhir.fhir})


def connect(svc: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def worker_rss_mb(svc: Service) -> float:
    pid = svc.client.get("/health").json()["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def send_until_refused(svc: Service, head: bytes, filler: bytes, total: int) -> tuple[int, bytes]:
    """Send `head` then `filler` up to `total` bytes, stopping as soon as the server answers or closes."""
    sock = connect(svc)
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(filler)
            sent += len(filler)
    except (BrokenPipeError, ConnectionResetError):
        pass
    with sock:
        return sent, answer(sock)


def test_a_16_mib_header_is_refused_early_and_memory_stays_flat(svc: Service) -> None:
    before = worker_rss_mb(svc)
    for _ in range(4):
        sent, reply = send_until_refused(
            svc, b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ", b"a" * 65536, 16 << 20)
        assert sent < 8 << 20, "the server kept reading a 16 MiB header"
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert worker_rss_mb(svc) - before < 20
    assert svc.client.get("/health").status_code == 200


def test_a_header_over_the_size_limit_gets_431(svc: Service) -> None:
    with connect(svc) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 9000 + b"\r\n\r\n")
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431") and reply.endswith(b"request head too large")


def test_too_many_headers_get_431(svc: Service) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(60)) + b"\r\n"
    with connect(svc) as sock:
        sock.sendall(head)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431") and reply.endswith(b"too many request headers")


def test_headers_within_the_limits_are_served(svc: Service) -> None:
    headers = {f"X-H{i}": "1" for i in range(40)} | {"X-Big": "b" * 6000}
    assert svc.client.get("/health", headers=headers).status_code == 200


def test_large_bodies_and_pipelined_requests_are_not_mistaken_for_large_heads(svc: Service) -> None:
    body = json.dumps(p.order_sign(extension={"pad": "x" * 900_000})).encode()
    head = (f"POST {SIGN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(svc) as sock:
        sock.sendall(head + body + head + body + health)  # one stream: reads span heads, bodies and ends
        reply = answer(sock)
    assert reply.count(b"HTTP/1.1 200") == 3 and b"431" not in reply.split(b"\r\n")[0]


def test_connections_that_never_finish_their_headers_are_closed(svc: Service) -> None:
    socks = [connect(svc) for _ in range(40)]
    for i, sock in enumerate(socks):
        if i % 2:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slowloris head, never finished
    assert svc.client.get("/health").status_code == 200  # still serving meanwhile
    closed = 0
    for sock in socks:
        with sock:
            closed += answer(sock) == b""  # closed by the server (recv gives EOF) well before the 10 s timeout
    assert closed == 40


def test_a_body_that_trickles_in_gets_408_and_the_connection_is_closed(svc: Service) -> None:
    """A slow-body client (the head complete, the body sent a few bytes at a time, never finished) must not
    hold a request slot: after body_timeout_s it gets an OperationOutcome with 408 and the connection closes."""
    body = json.dumps(p.order_sign()).encode()
    head = (f"POST {SIGN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with connect(svc) as sock:
        sock.sendall(head + body[:10])
        start = time.monotonic()
        sock.sendall(body[10:20])  # some more, but never the rest
        reply = answer(sock)
        waited = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"code":"timeout"' in reply and 0.8 < waited < 8
    assert svc.client.get("/health").status_code == 200  # and the worker serves on


def test_an_idle_keep_alive_connection_is_closed(svc: Service) -> None:
    with connect(svc) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        reply = answer(sock)  # the answer, then EOF when the keep-alive timeout closes the connection
        assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - start < 9


def test_past_the_in_flight_limit_requests_get_503_with_retry_after(svc: Service, fhir: FakeFhir) -> None:
    fhir.reset()
    fhir.delay_s = 1.0  # every request waits on the FHIR server: requests pile up in the worker
    req = p.order_sign(fhirServer=fhir.fhir, fhirAuthorization={"access_token": GOOD_TOKEN, "token_type": "Bearer",
                                                                  "expires_in": 300, "scope": "patient/*.read",
                                                                  "subject": "cds"})
    del req["prefetch"]
    body = json.dumps(req)

    def one(_: int) -> httpx.Response:
        return httpx.post(svc.url + SIGN, content=body, headers={"Content-Type": "application/json"}, timeout=30)

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(16)))
            health = svc.client.get("/health")
    finally:
        fhir.delay_s = 0.0
    statuses = sorted(r.status_code for r in answers)
    shed = [r for r in answers if r.status_code == 503]
    assert statuses.count(200) >= 4 and shed, statuses
    assert set(statuses) <= {200, 503}
    for r in shed:
        assert r.headers["retry-after"] == "1"
        assert r.json()["issue"][0]["code"] == "throttled"
    assert health.status_code == 200
