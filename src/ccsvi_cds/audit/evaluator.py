"""Build the per-process Evaluator, and refuse one whose rule pack is not the pack the audit started with.

Workers load the pack themselves (the engine cannot be pickled), possibly minutes after the driver did;
if someone edits the rules meanwhile, findings from two pack versions would be mixed in one audit. The
digest check turns that into a clear failure instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccsvi_cds.evaluate import Evaluator
    from ccsvi_cds.rulepack import RulePack


class PackChanged(RuntimeError):
    """The rule pack on disk changed while the audit was running."""


def build_evaluator(rules_dir: str, digest: str | None, base_url: str | None, pack: RulePack | None = None,
                    validate: bool = False) -> Evaluator:
    """An Evaluator for this process. ``pack``: a RulePack already loaded by the parent (plain data, safe to
    inherit through fork; only the engine handle must be built here), else it is loaded from ``rules_dir``."""
    from ccsvi_cds.evaluate import DEFAULT_BASE_URL, Evaluator
    from ccsvi_cds.rulepack import load_pack

    if pack is None:
        pack = load_pack(Path(rules_dir))
    if digest is not None and pack.digest != digest:
        raise PackChanged(f"the rule pack in {rules_dir} changed during the audit (digest {pack.digest[:12]}, "
                          f"expected {digest[:12]}): run the audit again")
    return Evaluator(pack, base_url=base_url or DEFAULT_BASE_URL, validate=validate)
