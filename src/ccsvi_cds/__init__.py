"""ccsvi-cds: decision support against venous angioplasty/stenting for CCSVI in multiple sclerosis.

The evaluation as a Python API (README "Embedding"): `Evaluator(load_pack(bundled_rules_dir()))`, then
`evaluate_request(cds_hooks_request)` or `evaluate(fhir_resources)`; the result has `findings` and `cards`.
The names are imported on first use, so `import ccsvi_cds` (every CLI start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccsvi_cds.bundled import bundled_rules_dir
    from ccsvi_cds.evaluate import Evaluation, Evaluator, Finding
    from ccsvi_cds.facts.issues import Issue
    from ccsvi_cds.rulepack.loader import RulePack, load_pack

__version__ = "0.1.0"
__all__ = ["Evaluation", "Evaluator", "Finding", "Issue", "RulePack", "bundled_rules_dir", "load_pack"]

_HOME = {
    "Evaluation": "ccsvi_cds.evaluate", "Evaluator": "ccsvi_cds.evaluate", "Finding": "ccsvi_cds.evaluate",
    "Issue": "ccsvi_cds.facts.issues", "RulePack": "ccsvi_cds.rulepack.loader",
    "load_pack": "ccsvi_cds.rulepack.loader", "bundled_rules_dir": "ccsvi_cds.bundled",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'ccsvi_cds' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
