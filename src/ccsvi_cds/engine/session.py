"""durable_rules, used the safe way (shared/engine/durable-rules.md, points 1-9).

1 not thread-safe           -> one lock per engine; callers scale with processes, never threads
2 default host races/timers -> a private Host subclass whose `_run` starts no threads
3 batch assert loses matches-> facts are asserted one by one; MessageNotHandled per fact means "no rule cared"
4 delete_state may crash    -> every session ends with an end fact matched by a no-op rule before deletion
5 1,024 live sessions       -> each session's state is deleted when its evaluation ends (in `finally`)
6 255 properties per fact   -> facts are flat; larger ones are refused before they reach the C core
7 rulesets are immutable    -> every engine registers a fresh, uniquely named ruleset; reload = new engine
8 action errors swallowed   -> actions only append to a list; errors are captured and re-raised
9 handles are process-local -> the engine remembers its pid and refuses to run in another process
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from durable import engine as durable  # type: ignore[import-untyped]

END_KIND = "__end__"
END_RULE = "__end__"
MAX_PROPERTIES = 200  # well under durable_rules' hard limit of 255
_ruleset_names = itertools.count()


class EngineError(RuntimeError):
    """The engine was misused or failed; never a silent loss of matches."""


@dataclass(frozen=True)
class Match:
    rule: str  # engine rule name, e.g. "venous-stent-ms#0"
    facts: dict[str, dict[str, Any]]  # alias -> the fact as asserted (without session bookkeeping)


class _ThreadlessHost(durable.Host):
    """A Host that starts no dispatch or timer threads (point 2): everything runs on assert."""

    def _run(self) -> None:
        return None


class RuleEngine:
    """One compiled ruleset; `run(facts)` evaluates one independent session and returns its matches."""

    def __init__(self, rules: Mapping[str, Mapping[str, Any]], name: str = "pack") -> None:
        if END_RULE in rules:
            raise EngineError(f"rule name {END_RULE!r} is reserved")
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sink: list[Match] | None = None
        self._errors: list[BaseException] = []
        self._sessions = itertools.count()
        self._leaked = 0
        self.name = f"{name}-{os.getpid()}-{next(_ruleset_names)}"
        definition: dict[str, dict[str, Any]] = {
            rule_name: {**dict(spec), "run": self._recorder(rule_name)} for rule_name, spec in rules.items()
        }
        definition[END_RULE] = {"all": [{"end": {"kind": END_KIND}}], "run": self._recorder(END_RULE)}
        self._host = _ThreadlessHost()
        try:
            self._host.register_rulesets({self.name: definition})
        except Exception as exc:  # the C core rejects malformed rule JSON with a bare Exception
            raise EngineError(f"durable_rules refused the compiled rules: {exc}") from exc

    def _recorder(self, rule_name: str) -> Any:
        def record(c: Any) -> None:
            try:
                if rule_name == END_RULE:
                    return
                facts = {alias: _strip(fact) for alias, fact in c._m.items()}
                assert self._sink is not None
                self._sink.append(Match(rule_name, facts))
            except BaseException as exc:  # noqa: BLE001 - durable_rules would swallow it (point 8)
                self._errors.append(exc)

        return record

    def run(self, facts: Sequence[Mapping[str, Any]]) -> list[Match]:
        if os.getpid() != self._pid:
            raise EngineError("this engine was built in another process; build one per process (point 9)")
        with self._lock:
            sid = str(next(self._sessions))
            matches: list[Match] = []
            self._sink, self._errors = matches, []
            ended = False
            try:
                for n, fact in enumerate(facts):
                    if len(fact) > MAX_PROPERTIES:
                        raise EngineError(f"fact {n} has {len(fact)} properties; facts must stay flat and small")
                    message = {k: v for k, v in fact.items() if v is not None}
                    message["sid"], message["n"] = sid, n  # n keeps identical facts distinct
                    try:
                        self._host.assert_fact(self.name, message)
                    except durable.MessageNotHandledException:
                        pass  # no rule cared about this fact (point 3)
                self._host.assert_fact(self.name, {"sid": sid, "kind": END_KIND, "n": len(facts)})
                ended = True
            finally:
                self._sink = None
                if ended:
                    self._host.delete_state(self.name, sid)
                else:
                    self._leaked += 1  # deleting a session no action ran in can crash (point 4)
            if self._errors:
                raise EngineError(f"rule action failed: {self._errors[0]!r}") from self._errors[0]
            return matches

    @property
    def leaked_sessions(self) -> int:
        return self._leaked


def _strip(fact: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fact.items() if k not in ("sid", "n", "$s")}
