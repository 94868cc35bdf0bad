"""The README runs as written: every ```sh runnable block is run with bash (-e, pipefail) in a copy of the
checkout (its .venv linked to the one running the tests), as a user pastes it after `make test`.

Blocks that need a running service, Spark or a shared cluster are plain ```sh and not run here; the
service and the wheel install are exercised by tests/service and tests/packaging/test_wheel.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```sh runnable\n(.*?)^```", re.DOTALL | re.MULTILINE)
SH_FENCE = re.compile(r"^```sh[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def runnable_blocks() -> list[str]:
    return FENCE.findall((REPO / "README.md").read_text())


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a user has after cloning, with the test run's venv as `.venv`."""
    root = tmp_path_factory.mktemp("readme") / "ccsvi-cds"
    shutil.copytree(REPO, root, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
        "out", "tests"))
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


def test_the_readme_has_runnable_blocks() -> None:
    blocks = runnable_blocks()
    assert len(blocks) >= 3
    assert any("rules diff" in b for b in blocks) and any("audit" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_runnable_block(index: int, checkout: Path) -> None:
    block = runnable_blocks()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCSVI_", "VIRTUAL_ENV"))}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"README block {index} failed:\n{block}\n--- stdout\n{proc.stdout[-3000:]}\n" \
                                 f"--- stderr\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


def test_no_shell_block_calls_ccsvi_cds_off_path() -> None:
    """`ccsvi-cds` is not on PATH after `make run`: blocks say .venv/bin/ccsvi-cds."""
    for block in SH_FENCE.findall((REPO / "README.md").read_text()):
        for line in block.splitlines():
            assert not re.match(r"\s*ccsvi-cds\b", line), line
