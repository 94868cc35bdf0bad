"""Issue 11 item 3: what the hook's hot path does once instead of per request keeps its answers the same.
The access line written straight from its fields equals the formatter's line; `Vary: Origin` still comes
with every answer to a request without Origin; the decisions committed together share their commit time."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import service_payloads as p
from cdshooks_checks import cards_of

from ccsvi_cds.cards import _NAMESPACE, suggestion_uuid
from ccsvi_cds.service import logs
from ccsvi_cds.service.bounded import read_bounded
from ccsvi_cds.service.feedback_store import DecisionRecord, Store
from ccsvi_cds.service.models import OrderContext

SIGN = "/cds-services/ccsvi-order-sign"
FIELDS: dict[str, Any] = {"method": "POST", "path": SIGN, "status": 200, "ms": 1.25, "service": "ccsvi-order-sign",
                          "hookInstance": "\x00" + "h" * 300, "cards": 1, "rules": ["venous-angioplasty-ms"],
                          "issues": 0, "orders": 3, "cardErrors": 0, "extra": {"nested": ["x\ny"]}}


@pytest.fixture
def buffered() -> Iterator[io.StringIO]:
    """`logs.setup` as a served worker has it, writing to a buffer; the loggers are restored afterwards."""
    names = (logs.LOGGER_NAME, "uvicorn.error", "uvicorn")
    saved = [(logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names]
    saved_handler, out = logs._handler, io.StringIO()
    logs._handler = logs.BufferedHandler(out, interval=3600)
    logs._handler.setFormatter(logs.JsonFormatter())
    logs.setup("info")
    try:
        yield out
    finally:
        logs._handler = saved_handler
        for name, (handlers, level, propagate) in zip(names, saved, strict=True):
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_access_line_written_directly_equals_the_formatted_record(buffered: io.StringIO) -> None:
    logs.record("request", dict(FIELDS))
    logs.log.info("request", extra=dict(FIELDS))
    logs.flush()
    direct, formatted = (orjson.loads(line) for line in buffered.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct.pop("ts"))
    formatted.pop("ts")
    assert direct == formatted
    assert list(direct)[:4] == ["level", "logger", "msg", "method"]
    assert direct["hookInstance"].startswith("\\x00hhh") and direct["extra"] == {"nested": ["x\\ny"]}


def test_access_line_is_an_ordinary_record_where_the_service_does_not_own_the_logger(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=logs.LOGGER_NAME):
        logs.record("request", {"status": 200, "hookInstance": "abc"})
    record = caplog.records[-1]
    assert record.getMessage() == "request" and record.__dict__["hookInstance"] == "abc"


def test_timestamp_is_the_record_time_in_utc_with_milliseconds() -> None:
    line = orjson.loads(logs.json_line(86_400 * 365 + 59.0994, "info", "x", "m", {}))
    assert line["ts"] == "1971-01-01T00:00:59.099Z"
    assert orjson.loads(logs.json_line(86_400 * 365 + 60.5, "info", "x", "m", {}))["ts"] == "1971-01-01T00:01:00.500Z"


def test_answers_without_origin_still_vary_on_origin(app_factory: Any) -> None:
    svc = app_factory({"CCSVI_CORS_ORIGINS": "https://ehr.example"})
    for resp in (svc.post(SIGN, p.order_sign()), svc.client.get("/cds-services"), svc.client.get("/nowhere"),
                 svc.post(SIGN, b"{")):
        assert resp.headers.get_list("vary") == ["Origin"], resp.status_code
    allowed = svc.post(SIGN, p.order_sign(), headers={"Origin": "https://ehr.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example"
    assert allowed.headers.get_list("vary") == ["Origin"] and cards_of(allowed)


def test_uuids_are_the_standard_library_ones() -> None:
    for i in range(500):
        name = f"ccsvi|rule-{i}|ServiceRequest/{'é' * (i % 3)}{i}|{i % 4}"
        assert suggestion_uuid(*name.split("|")[:3], i % 4) == str(uuid.uuid5(_NAMESPACE, name))


def test_card_uuids_are_random_version_4(app_factory: Any) -> None:
    svc = app_factory()
    ids = [uuid.UUID(card["uuid"]) for _ in range(20) for card in cards_of(svc.post(SIGN, p.order_sign()))]
    assert len(set(ids)) == len(ids) == 20 and {(u.version, u.variant) for u in ids} == {(4, uuid.RFC_4122)}


def test_draft_orders_are_checked_for_shape_without_copying_their_fields(app_factory: Any) -> None:
    req = p.order_sign()
    req["context"]["draftOrders"]["entry"][0]["resource"]["unknownElement"] = {"x": 1}
    entry = OrderContext.model_validate(req["context"]).draftOrders.entry[0]
    assert entry.resource.resourceType == "ServiceRequest" and not entry.resource.model_extra
    assert cards_of(app_factory().post(SIGN, req))  # unknown fields are still accepted


def test_bounded_read_builds_its_error_only_when_the_limit_is_passed() -> None:
    made: list[str] = []

    def too_large() -> Exception:
        made.append("made")
        return ValueError("too large")

    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    assert asyncio.run(read_bounded(chunks(b"ab", b"cd"), "4", 4, too_large)) == b"abcd" and made == []
    for declared, parts in (("5", [b""]), (None, [b"abc", b"de"]), ("3", [b"abcde"])):
        with pytest.raises(ValueError, match="too large"):
            asyncio.run(read_bounded(chunks(*parts), declared, 4, too_large))
    assert len(made) == 3


def test_decisions_committed_together_share_their_commit_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    first = DecisionRecord(hook_instance=str(uuid.uuid4()), service_id="s", hook="order-sign", patient_id=None,
                           user_id=None, encounter_id=None, order_refs=[], input_digest="0" * 64,
                           pack={"name": "n", "version": "v", "digest": "d"}, issue_paths=[], cards=[])
    store.record_decisions([first, dataclasses.replace(first, hook_instance=str(uuid.uuid4()))])
    store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        times = [t for (t,) in conn.execute("SELECT created_at FROM decision ORDER BY id")]
    assert len(times) == 2 and times[0] == times[1]


def test_hook_calls_taken_past_the_router_answer_as_through_it(app_factory: Any) -> None:
    """A hook call without Origin goes from the front layer straight to its endpoint; with Origin it goes
    through CORS and Starlette's router: the answers (and what the metrics count) must not differ."""
    svc = app_factory({"CCSVI_CORS_ORIGINS": "https://ehr.example"})
    origin = {"Origin": "https://ehr.example"}

    def answer(resp: Any) -> Any:
        data = resp.json()
        for card in data.get("cards", []) if isinstance(data, dict) else []:
            card.pop("uuid")
        return resp.status_code, resp.headers["content-type"], data

    for path, body in ((SIGN, p.order_sign()), ("/cds-services/no-such-service", p.order_sign()), (SIGN, b"{"),
                       (SIGN + "/", p.order_sign()), ("/cds-services/ccsvi-order-select", p.order_sign())):
        direct, routed = answer(svc.post(path, body)), answer(svc.post(path, body, headers=origin))
        assert direct == routed, path
    assert answer(svc.post(SIGN, p.order_sign()))[2]["cards"]

    def answered() -> float:
        line = re.search(r'ccsvi_requests_total\{endpoint="hook",hook="order-sign",service="ccsvi-order-sign",'
                         r'status="200"\} (\S+)', svc.client.get("/metrics").text)
        return float(line[1]) if line else 0.0

    before = answered()
    svc.post(SIGN, p.order_sign())
    svc.post(SIGN, p.order_sign(), headers=origin)
    assert answered() == before + 2


def test_commit_time_is_written_as_datetime_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from ccsvi_cds.service import feedback_store

    for now in (86_400 * 365 + 59.0994, 86_400 * 365 + 60.5, 1_796_215_675.25, 1_796_215_675.999):
        monkeypatch.setattr(feedback_store.time, "time", lambda now=now: now)
        assert feedback_store._now() == datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
