"""Test harness (imported by the service tests and their fixtures): the real service under uvicorn (a subprocess started with `ccsvi-cds serve`), a small FHIR
server and a JWKS host (a thread on loopback), and signing keys. Only loopback traffic."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import service_payloads as payloads

REPO = Path(__file__).resolve().parents[2]
SERVE = [str(Path(sys.executable).parent / "ccsvi-cds"), "serve"]
GOOD_TOKEN = "fhir-access-token-good"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A `ccsvi-cds serve` subprocess; `restart()` keeps its settings (and so its database file)."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
        self.env = {**inherited, **env}
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the subprocess for its lifetime
        self.proc = subprocess.Popen([*SERVE, "--port", str(self.port), *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.client.post(path, content=content, headers=headers, **kw)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# --- a small FHIR server (the EHR's), also hosting JWKS documents -------------------------------------


class FakeFhir:
    """Serves Condition/Procedure/ResearchSubject searches and ResearchStudy reads for `data`, pages of
    `page_size`, checks the bearer token, and records every request (path, query, Authorization)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.studies: dict[str, dict[str, Any]] = {}
        self.jwks: dict[str, dict[str, Any]] = {}
        self.page_size = 100
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.fhir = self.base + "/fhir"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.data.clear()
        self.studies.clear()
        self.requests.clear()
        self.page_size = 100
        self.delay_s = 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append({"path": parts.path, "query": query,
                                      "authorization": self.headers.get("Authorization")})
                if parts.path in fake.jwks:
                    return self._send(200, fake.jwks[parts.path])
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
                    return self._send(401, {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "login"}]})
                segments = parts.path.split("/")[2:]  # after /fhir
                if len(segments) == 2 and segments[0] == "ResearchStudy":
                    study = fake.studies.get(segments[1])
                    return self._send(200, study) if study else self._send(404, {"resourceType": "OperationOutcome",
                                                                                 "issue": []})
                if len(segments) == 1 and segments[0] in ("Condition", "Procedure", "ResearchSubject"):
                    patient = query.get("patient", "")
                    items = list(fake.data.get(patient, {}).get(segments[0], []))
                    if segments[0] == "ResearchSubject" and "_include" in query:
                        items += [fake.studies[s] for s in fake.data.get(patient, {}).get("_studies", [])]
                    page = int(query.get("page", "0"))
                    chunk = items[page * fake.page_size:(page + 1) * fake.page_size]
                    bundle = payloads.bundle(chunk)
                    if (page + 1) * fake.page_size < len(items):
                        bundle["link"] = [{"relation": "next", "url":
                                           f"{fake.fhir}/{segments[0]}?patient={patient}&page={page + 1}"}]
                    return self._send(200, bundle)
                return self._send(404, {"resourceType": "OperationOutcome", "issue": []})

        return Handler


# --- a recording HTTP server for hardening tests (JWKS host, hostile FHIR server) ---------------------


class RecordingServer:
    """Answers every GET with `respond(path_and_query)` -> (status, body, headers) and records each request
    (raw path, Authorization) in `requests`. `delay_s` holds each answer back; `sent` counts body bytes
    actually written (a client that stops reading makes the write fail)."""

    def __init__(self, respond: Any) -> None:
        self.respond = respond
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                with rec._lock:
                    rec.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                if rec.delay_s:
                    time.sleep(rec.delay_s)
                status, body, headers = rec.respond(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                chunks = body if isinstance(body, list) else [body]
                if not isinstance(body, list):
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        with rec._lock:
                            rec.sent += len(chunk)
                except OSError:
                    self.close_connection = True

        return Handler
