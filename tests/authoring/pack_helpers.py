"""Helpers for the authoring tests: where the repo is, edit a pack file, find where a text is (1-based), so every
location assertion is exact and independent of the linter; and the `pack_dir` fixture, imported by the test
modules (no conftest.py here: tests/service and tests/core import theirs by the bare name `conftest`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def position(path: Path, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the n-th occurrence of `needle` in the file."""
    seen = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        start = 0
        while (col := line.find(needle, start)) >= 0:
            seen += 1
            if seen == occurrence:
                return n, col + 1
            start = col + 1
    raise AssertionError(f"{needle!r} not found in {path}")


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    """tmp/rules + tmp/fhir_examples, laid out as in the repo so case paths (../../fhir_examples) resolve."""
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    shutil.copytree(REPO / "fhir_examples", tmp_path / "fhir_examples")
    return tmp_path / "rules"
