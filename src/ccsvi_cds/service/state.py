"""The active rule pack and its evaluator, one per worker process.

durable_rules is not thread-safe and its handles cannot cross a fork, so each worker process builds its own
Evaluator (at start-up, inside the process) and every evaluation runs on the event-loop thread. `swap`
replaces the pack atomically (one attribute assignment): a request sees either the old pack or the new one,
and the decision record names the one that produced its cards. Call `swap` from the event-loop thread.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccsvi_cds.evaluate import Evaluator
    from ccsvi_cds.rulepack import RulePack
    from ccsvi_cds.rulepack.model import ServiceSpec

log = logging.getLogger("ccsvi_cds.service")


@dataclass(frozen=True)
class ActiveRules:
    pack: RulePack
    evaluator: Evaluator
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @cached_property
    def identity(self) -> dict[str, str]:
        """The pack identity shown in discovery, /health and each decision record (fixed once loaded)."""
        return {
            "name": str(self.pack.name),
            "version": str(self.pack.version),
            "digest": str(self.pack.digest),
            "loadedAt": self.loaded_at.isoformat(timespec="seconds"),
        }

    @cached_property
    def services(self) -> dict[str, ServiceSpec]:
        """The pack's CDS services by id (looked up on every hook call: built once per pack)."""
        return {s.id: s for s in self.pack.manifest.services}

    @cached_property
    def prefetch_templates(self) -> dict[str, str]:
        """The prefetch templates of every service (read on every hook call: derived once per pack)."""
        return self.evaluator.requirements.prefetch_templates()


class RuleState:
    """Holder of the running pack: `current` for readers, `swap(pack)` for the (future) hot reload."""

    def __init__(self, **evaluator_options: Any) -> None:
        self._active: ActiveRules | None = None
        self._options = evaluator_options  # e.g. base_url=, validate= for every Evaluator built here
        self.card_errors = 0  # cards dropped at request time because they failed to render
        self.last_card_error: dict[str, str] | None = None

    def card_failed(self, rule_id: str, message: str) -> None:
        """A card of `rule_id` failed to render and was left out of an answer: log it, count it for /health."""
        pack = self.current.identity
        self.card_errors += 1
        self.last_card_error = {"rule": rule_id, "error": message, "packDigest": pack["digest"],
                                "at": datetime.now(UTC).isoformat(timespec="seconds")}
        log.error("card failed to render; answered without it",
                  extra={"rule": rule_id, "error": message, "version": pack["version"], "digest": pack["digest"]})

    @property
    def cards_failing(self) -> bool:
        """True when a card of the running pack has failed to render (a new pack starts afresh)."""
        last = self.last_card_error
        return last is not None and self._active is not None and last["packDigest"] == self._active.pack.digest

    def card_error_status(self) -> dict[str, Any]:
        """For /health: how many cards failed to render in this worker, and the last one."""
        return {"count": self.card_errors, "last": self.last_card_error}

    @property
    def current(self) -> ActiveRules:
        if self._active is None:
            raise RuntimeError("no rule pack loaded yet")
        return self._active

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def swap(self, pack: RulePack) -> ActiveRules:
        """Compile `pack` into a new Evaluator, then make it the active one; returns the new state.

        If compiling fails, the running pack stays active and the error propagates.
        """
        from ccsvi_cds.evaluate import Evaluator

        evaluator = Evaluator(pack, **self._options)
        evaluator.warm()
        active = ActiveRules(pack=pack, evaluator=evaluator)
        self._active = active
        _freeze_heap()
        return active

    def load(self, rules_dir: Path) -> ActiveRules:
        from ccsvi_cds.rulepack import load_pack

        return self.swap(load_pack(rules_dir))


def _freeze_heap() -> None:
    """Move the long-lived objects (the pack, the compiled rules, imported modules) out of the collector's
    reach: a full collection over them took 15-50 ms on the 2-core machine, a visible p99 spike on a
    request that happened to trigger it. Done once per pack load; the collection first frees the old pack."""
    gc.collect()
    gc.freeze()
