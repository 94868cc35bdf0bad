"""durable_rules, used the safe way (shared/engine/durable-rules.md, points 1-9).

1 not thread-safe           -> one lock per engine; callers scale with processes, never threads
2 default host races/timers -> no Host at all: the C core is driven directly, and starts no threads
3 batch assert loses matches-> facts are asserted one by one; "not handled" per fact means "no rule cared"
4 delete_state may crash    -> a session in which no rule fired ends with an end fact matched by a no-op rule
5 1,024 live sessions       -> each session's state is deleted when its evaluation ends (in `finally`)
6 255 properties per fact   -> facts are flat; larger ones are refused before they reach the C core
7 rulesets are immutable    -> every engine registers a fresh, uniquely named ruleset; reload = new engine
8 action errors swallowed   -> there are no Python actions: a fired rule is recorded here, after the C core
                               hands its match over, and any error doing so is raised once the session ends
9 handles are process-local -> the engine remembers its pid and refuses to run in another process

Why not durable.engine's Host: per fact it encoded with the standard library's json, built a Closure, a
Content and nested callbacks, and read the clock twice; that was most of the engine's time on a hook call.
The calls made to the C core are the Host's own, in its order (assert, start action for the state, update
state, complete and start the next action; abandon on failure), with orjson for the messages.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import durable_rules_engine as core  # type: ignore[import-not-found]
import orjson

END_KIND = "__end__"
END_RULE = "__end__"
MAX_PROPERTIES = 200  # well under durable_rules' hard limit of 255
_ruleset_names = itertools.count()

# result codes of the C core's assert_fact (durable.engine.Ruleset._handle_result)
_HANDLED, _NOT_HANDLED, _OBSERVED, _DEFERRED = 0, 1, 2, 3
_BOOKKEEPING = frozenset(("sid", "n", "$s"))


class EngineError(RuntimeError):
    """The engine was misused or failed; never a silent loss of matches."""


@dataclass(frozen=True)
class Match:
    rule: str  # engine rule name, e.g. "venous-stent-ms#0"
    facts: dict[str, dict[str, Any]]  # alias -> the fact as asserted (without session bookkeeping)


class RuleEngine:
    """One compiled ruleset; `run(facts)` evaluates one independent session and returns its matches."""

    def __init__(self, rules: Mapping[str, Mapping[str, Any]], name: str = "pack") -> None:
        if END_RULE in rules:
            raise EngineError(f"rule name {END_RULE!r} is reserved")
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sessions = itertools.count()
        self._leaked = 0
        self.name = f"{name}-{os.getpid()}-{next(_ruleset_names)}"
        definition: dict[str, Any] = {rule_name: {k: v for k, v in spec.items() if k != "run"}
                                      for rule_name, spec in rules.items()}
        definition[END_RULE] = {"all": [{"end": {"kind": END_KIND}}]}
        try:
            self._handle = core.create_ruleset(self.name, orjson.dumps(definition).decode())
        except Exception as exc:  # the C core rejects malformed rule JSON with a bare Exception
            raise EngineError(f"durable_rules refused the compiled rules: {exc}") from exc

    def run(self, facts: Sequence[Mapping[str, Any]]) -> list[Match]:
        if os.getpid() != self._pid:
            raise EngineError("this engine was built in another process; build one per process (point 9)")
        with self._lock:
            sid = str(next(self._sessions))
            matches: list[Match] = []
            errors: list[BaseException] = []
            fired = False  # an action ran in this session: its state can be deleted (point 4)
            try:
                for n, fact in enumerate(facts):
                    if len(fact) > MAX_PROPERTIES:
                        raise EngineError(f"fact {n} has {len(fact)} properties; facts must stay flat and small")
                    message = {k: v for k, v in fact.items() if v is not None}
                    message["sid"], message["n"] = sid, n  # n keeps identical facts distinct
                    fired = self._assert(message, matches, errors) or fired
                if not fired:
                    fired = self._assert({"sid": sid, "kind": END_KIND, "n": len(facts)}, matches, errors)
            finally:
                if fired:
                    core.delete_state(self._handle, sid)
                else:
                    self._leaked += 1  # deleting a session no action ran in can crash (point 4)
            if errors:
                raise EngineError(f"rule action failed: {errors[0]!r}") from errors[0]
            return matches

    def _assert(self, message: dict[str, Any], matches: list[Match], errors: list[BaseException]) -> bool:
        """Assert one fact and run the actions it made ready; True if any ran."""
        handle = self._handle
        code, state = core.assert_fact(handle, orjson.dumps(message).decode())
        if code == _NOT_HANDLED:
            return False  # no rule cared about this fact (point 3)
        if code == _OBSERVED:
            raise EngineError("durable_rules saw this fact twice in one session")
        if code == _DEFERRED:
            state = 0
        started = core.start_action_for_state(handle, state)
        if started is None:
            return False
        state_json, ready = started
        while ready is not None:
            try:
                for rule, matched in orjson.loads(ready).items():
                    if rule != END_RULE:
                        matches.append(Match(rule, {alias: {k: v for k, v in fact.items() if k not in _BOOKKEEPING}
                                                    for alias, fact in matched.items()}))
            except BaseException as exc:  # noqa: BLE001 - completed first, raised when the session ends
                errors.append(exc)
            try:
                core.update_state(handle, state_json)
                ready = core.complete_and_start_action(handle, state)
            except BaseException:
                core.abandon_action(handle, state)
                raise
        return True

    @property
    def leaked_sessions(self) -> int:
        return self._leaked
