"""Hot reload of the rule pack in a running service: lint off to the side, swap only a valid pack.

On a change under the pack folder: lint it in a worker thread (reading and validating files is pure Python,
no engine; lint includes rendering every card, see render_check.py); refuse it with every lint error logged
if it has errors outside the test cases (a case with a missing input is logged, it does not block a pack) or if the files changed while being read
(the next change event retries); otherwise let the state holder build the new Evaluator and swap it in on
the event-loop thread (durable_rules must not be touched from two threads). The last good pack keeps serving
until then, and a request reads the active pack once, so it never sees half of one and half of another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ccsvi_cds.authoring.cases import is_case_problem
from ccsvi_cds.authoring.lint import LintResult, lint_pack
from ccsvi_cds.rulepack.loader import RulePack

if TYPE_CHECKING:
    from ccsvi_cds.service.state import ActiveRules

log = logging.getLogger("ccsvi_cds.service")


class RuleHolder(Protocol):
    """What the reloader needs of the service's state (ccsvi_cds.service.state.RuleState)."""

    @property
    def current(self) -> ActiveRules: ...

    def swap(self, pack: RulePack) -> ActiveRules: ...  # builds the Evaluator, then makes it active atomically


@dataclass(frozen=True)
class ReloadOutcome:
    status: Literal["loaded", "refused", "unchanged", "unstable"]
    version: str | None = None
    digest: str | None = None
    errors: tuple[str, ...] = ()
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "version": self.version, "digest": self.digest,
                "errors": list(self.errors), "at": self.at}


def files_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every file under the pack folder: equal before and after a read = a stable read.

    Independent of which files the loader reads or how it digests them: any write in between shows up here.
    """
    out = []
    for path in sorted(root.rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue  # vanished mid-scan: the next event re-checks
        if path.is_file():
            out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def lint_stable(root: Path) -> tuple[LintResult, bool]:
    """Lint the pack (no case evaluation: no engine off the loop thread); stable = no file changed meanwhile."""
    before = files_signature(root)
    result = lint_pack(root, run_case_inputs=False)
    return result, files_signature(root) == before


class PackReloader:
    """Watches `rules_dir` and swaps valid packs into `holder`; `last` is the latest outcome."""

    def __init__(self, rules_dir: Path, holder: RuleHolder, *, debounce_ms: int = 300,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.rules_dir = Path(rules_dir)
        self.on_outcome = on_outcome  # told each outcome's status (the service counts them in its metrics)
        self.holder = holder
        self.debounce_ms = debounce_ms
        self.last: ReloadOutcome | None = None
        self._lock = asyncio.Lock()

    async def reload_once(self) -> ReloadOutcome:
        async with self._lock:  # one reload at a time; a burst of events collapses into sequential checks
            outcome = await self._reload()
        self.last = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome.status)
        return outcome

    async def _reload(self) -> ReloadOutcome:
        result, stable = await asyncio.to_thread(lint_stable, self.rules_dir)
        if not stable:
            log.info("rule pack changed while being read; waiting for the next change",
                     extra={"rules_dir": str(self.rules_dir)})
            return ReloadOutcome("unstable")
        for problem in result.errors:  # the service does not run the cases: their problems never block a pack
            if is_case_problem(problem, self.rules_dir):
                log.warning("rule pack case problem (not blocking the reload): %s", problem,
                            extra={"rules_dir": str(self.rules_dir)})
        blocking = [p for p in result.errors if not is_case_problem(p, self.rules_dir)]
        if blocking or result.pack is None:
            errors = tuple(str(p) for p in blocking)
            for line in errors:
                log.error("rule pack refused: %s", line, extra={"rules_dir": str(self.rules_dir)})
            running = self.holder.current.pack
            log.warning("rule pack reload refused; still serving the last good pack",
                        extra={"errors": len(errors), "version": running.version, "digest": running.digest})
            return ReloadOutcome("refused", errors=errors)
        pack: RulePack = result.pack
        if pack.digest == self.holder.current.pack.digest:
            return ReloadOutcome("unchanged", pack.version, pack.digest)
        try:
            self.holder.swap(pack)  # on the event-loop thread: builds the engine, then one assignment
        except Exception as exc:  # noqa: BLE001 - the engine refused it: keep serving the old pack
            log.error("rule pack reload failed to compile; still serving the last good pack",
                      extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            return ReloadOutcome("refused", pack.version, pack.digest, (f"compile: {exc}",))
        log.info("rule pack reloaded", extra={"pack": pack.name, "version": pack.version, "digest": pack.digest,
                                              "warnings": len(result.warnings)})
        return ReloadOutcome("loaded", pack.version, pack.digest)

    async def watch(self, stop_event: asyncio.Event | None = None) -> None:
        """Reload on every batch of changes under the pack folder until `stop_event` is set."""
        from watchfiles import DefaultFilter, awatch

        log.info("watching the rule pack for changes", extra={"rules_dir": str(self.rules_dir)})
        # every file counts (rules, value sets, patient pages...); DefaultFilter skips editor swap/backup files
        async for _changes in awatch(self.rules_dir, watch_filter=DefaultFilter(), debounce=self.debounce_ms,
                                     stop_event=stop_event):
            try:
                await self.reload_once()
            except Exception as exc:  # noqa: BLE001 - a reload bug must not stop the watcher or the service
                log.error("rule pack reload crashed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})


def start_watcher(rules_dir: Path, holder: RuleHolder, on_outcome: Callable[[str], None] | None = None
                  ) -> tuple[PackReloader, asyncio.Task[None], asyncio.Event]:
    """Start watching in the running loop; set the event (then await the task) to stop."""
    reloader = PackReloader(rules_dir, holder, on_outcome=on_outcome)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(stop), name="rule-pack-watcher")
    return reloader, task, stop
