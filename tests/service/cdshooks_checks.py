"""What a conforming CDS Hooks 2.0 response / OperationOutcome looks like (used by the service tests)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


def assert_no_empty_values(value: Any, path: str = "$") -> None:
    """CDS Hooks: no null, "", [] or {} (except the top-level `cards: []`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert v is not None and v != "" and v != {} and v != [], f"empty value at {path}.{k}"
            assert_no_empty_values(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_no_empty_values(v, f"{path}[{i}]")


def assert_card(card: dict[str, Any]) -> None:
    uuid.UUID(card["uuid"])
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"]
    if card.get("suggestions"):
        assert card["selectionBehavior"] in ("at-most-one", "any")
        recommended = [s for s in card["suggestions"] if s.get("isRecommended")]
        assert card["selectionBehavior"] != "at-most-one" or len(recommended) <= 1
        for s in card["suggestions"]:
            assert s["label"]
            uuid.UUID(s["uuid"])
            for a in s.get("actions", []):
                assert a["type"] in ("create", "update", "delete") and a["description"]
                if a["type"] == "delete":
                    assert "/" in a["resourceId"]
                else:
                    assert isinstance(a["resource"], dict)
    for r in card.get("overrideReasons", []):
        assert r["code"] and r["display"]
    for link in card.get("links", []):
        assert link["label"] and link["url"] and link["type"] in ("absolute", "smart")
    assert_no_empty_values(card)


def cards_of(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) <= {"cards", "systemActions"}
    for card in body["cards"]:
        assert_card(card)
    return body["cards"]


def outcome(resp: httpx.Response, status: int) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome answered with `status` (each with diagnostics)."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"]
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert issue["code"] and issue["diagnostics"]
    return body["issue"]


def expressions(issues: list[dict[str, Any]]) -> set[str]:
    return {e for i in issues for e in i.get("expression", [])}


def rules_of(cards: list[dict[str, Any]]) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]
