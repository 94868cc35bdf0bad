"""Where the rule pack shipped with the package lives, installed or in a source checkout.

`ccsvi_cds/rules` is a symlink to the top-level `rules/` folder the authors edit (one copy, in git); a wheel
carries the files themselves as package data, so the same lookup works from any directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_rules_dir() -> Path:
    """The bundled rule pack folder (absolute; symlinks resolved, so reload watches the real files)."""
    return Path(str(files("ccsvi_cds") / "rules")).resolve()
