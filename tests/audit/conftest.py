"""Fixtures for the audit tests: the bundled rule pack, a small generated export, one shared Spark session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ (the export generator) lives at the repository root
    sys.path.insert(0, str(REPO))

RULES = REPO / "rules"


@pytest.fixture(scope="session")
def rules_dir() -> Path:
    return RULES


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A realistic generated Bulk Data export (~6,000 resources, several files per type, gzip)."""
    from bench.generate_export import generate

    out = tmp_path_factory.mktemp("export") / "bulk"
    info = generate(out, 6000, seed=11, gz=True, per_file=1500)
    assert any(v != "silent" for v in info["truth"].values()), "the seed must give some CCSVI orders"
    return out


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One real local Spark session (local[2]) for all Spark tests of this worker."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[2]").appName("ccsvi-cds audit tests")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "1g")
               .config("spark.sql.shuffle.partitions", "4")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
