"""A card the EHR received has its decision record, even when the service is killed right after answering.

The real service (`ccsvi-cds serve --workers 2`, its own process group) takes concurrent order-sign calls;
the whole group gets SIGKILL as soon as the last answer arrives (no shutdown, no flush); then every card uuid
the clients received must be in the SQLite file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from service_harness import REPO, SERVE, free_port

SIGN = "/cds-services/ccsvi-order-sign"
THREADS = 8
PER_THREAD = 40


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    db_path = tmp_path / "service.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
    env.update(CCSVI_DB_PATH=str(db_path), CCSVI_LOG_LEVEL="warning")
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - handed to the subprocess for its lifetime
    proc = subprocess.Popen([*SERVE, "--port", str(port), "--workers", "2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    pids: set[int] = set()
    try:
        while len(pids) < 2:  # both workers up: each answers /health with its pid
            assert proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()[-3000:]
            try:
                r = httpx.get(url + "/health", timeout=1)
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.1)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise
    return proc, url, db_path


def test_every_card_received_has_its_decision_record_after_sigkill(tmp_path: Path) -> None:
    proc, url, db_path = _start(tmp_path)
    body = json.loads((REPO / "fhir_examples" / "cds-hooks-order-sign.json").read_text())
    received: list[tuple[str, str]] = []  # (hookInstance, card uuid)
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(PER_THREAD):
                instance = str(uuid.uuid4())
                r = http.post(SIGN, json={**body, "hookInstance": instance})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                cards: list[dict[str, Any]] = r.json()["cards"]
                with lock:
                    received.extend((instance, card["uuid"]) for card in cards)

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # supervisor and workers at once: nothing gets to flush
        proc.wait(timeout=30)
    assert failures == []
    assert len(received) >= THREADS * PER_THREAD  # the example fires at least one card per call

    with sqlite3.connect(db_path) as db:  # the WAL is read back as a reopening process would
        recorded = dict(db.execute("SELECT c.card_uuid, d.hook_instance FROM decision_card c"
                                   " JOIN decision d ON d.id = c.decision_id").fetchall())
    missing = [card for _, card in received if card not in recorded]
    assert missing == [], f"{len(missing)} of {len(received)} cards received have no decision record"
    assert all(recorded[card] == instance for instance, card in received)


def test_a_decision_that_cannot_be_written_gives_503_not_cards_without_a_record(tmp_path: Path) -> None:
    """The table is gone under the running worker (a real SQLite fault): no cards leave without their record."""
    from starlette.testclient import TestClient

    from ccsvi_cds.service.app import create_app
    from ccsvi_cds.service.settings import ServiceSettings

    db_path = tmp_path / "service.sqlite3"
    body = json.loads((REPO / "fhir_examples" / "cds-hooks-order-sign.json").read_text())
    with TestClient(create_app(ServiceSettings(db_path=db_path))) as client:
        assert client.post(SIGN, json=body).status_code == 200
        with sqlite3.connect(db_path) as db:
            db.execute("DROP TABLE decision_card")
        r = client.post(SIGN, json={**body, "hookInstance": str(uuid.uuid4())})
        assert r.status_code == 503, r.text
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome" and "cards" not in outcome
        assert "decision record could not be written" in outcome["issue"][0]["diagnostics"]
