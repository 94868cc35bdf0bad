"""The second reading (`gather`) finds exactly the rows the first reading would give for the patients to
join, however the NDJSON spells their references: it parses only the lines the first reading's index names
(`RowIndex`), so a line it skipped wrongly would silently lose a record from a join."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_data import jugular_angioplasty, mri, ms, patient

from ccsvi_cds.audit import embedded, partition
from ccsvi_cds.audit.embedded import gather, read_and_route
from ccsvi_cds.audit.partition import Routing, Row, key_hash
from ccsvi_cds.audit.sources import InputFile, ReadTask, discover, iter_cut_tasks, plan_tasks
from ccsvi_cds.facts.requirements import data_requirements
from ccsvi_cds.rulepack import load_pack

WANTED = frozenset({"Patient/p1", "Patient/p-2.x", "Patient/p3"})
HASHES = frozenset(key_hash(k) for k in WANTED)


def _lines() -> list[bytes]:
    """Each way a record may name a wanted patient, beside near misses that must not be gathered."""
    raw = [
        patient("p1"),
        b'{"resourceType" : "Patient" , "id" : "p-2.x"}',  # spaces around the colons
        b'{"resourceType":"Patient","id":"p\\u0033"}',  # p3, its id spelt with an escape
        ms("c1", "Patient/p1"),
        ms("c2", "https://ehr.example.org/fhir/Patient/p-2.x/_history/4"),  # absolute and versioned
        b'{"resourceType":"Condition","id":"c3","subject":{"reference":"Patient\\/p3"}}',  # escaped slash
        jugular_angioplasty("sr1", "Patient/p1"),
        mri("sr2", "Patient/p10"),  # p1 is a prefix of p10: mentioned, parsed, not kept
        mri("sr3", "Patient/q1"),  # not wanted
        ms("c4", "Patient/q2"),
        {"resourceType": "Bundle", "type": "collection", "entry": [  # entries refer by fullUrl
            {"fullUrl": "urn:uuid:0b1c6d5e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
             "resource": {"resourceType": "Patient", "id": "p3"}},
            {"fullUrl": "urn:uuid:1b1c6d5e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
             "resource": {**ms("c5", "urn:uuid:0b1c6d5e-1f2a-4b3c-8d4e-5f6a7b8c9d0e")}}]},
        b'{"resourceType":"Condition","id":"c6","subject":{"reference":"Patient/p1"}}\r',  # CRLF line end
        b'{"resourceType": "Condition", ',  # malformed: reported by the first reading only
        b"",
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}},  # never read
        {"resourceType": "ResearchSubject", "id": "rs1", "individual": {"reference": "Patient/p-2.x"}},
    ]
    return [r if isinstance(r, bytes) else orjson.dumps(r) for r in raw]


def _rows(rows: list[Row]) -> list[tuple[Any, ...]]:
    return [(r.key, r.rtype, r.file_index, r.line, r.entry, r.raw) for r in rows]


def _both_readings(files: list[InputFile], tasks: list[ReadTask], rules_dir: Path, hashes: frozenset[int]
                   ) -> tuple[list[Row], list[Row], list[list[tuple[int, int]]]]:
    """The wanted patients' rows as the first reading gives them, as the second reading gathers them from the
    positions the first one's index names for ``hashes``, and those positions per task."""
    routing = Routing.of(data_requirements(load_pack(rules_dir)))
    first: list[Row] = []
    second: list[Row] = []
    positions = []
    for task in tasks:
        routed = read_and_route(files, task, routing, lambda r: first.append(r) if r.key in WANTED else None, None)
        positions.append(routed.index.positions_of(hashes))
        gather(files, task, routing, WANTED, positions[-1], second.append)
    return first, second, positions


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [False, True])
def test_gather_finds_exactly_the_first_readings_rows(tmp_path: Path, rules_dir: Path, gz: bool, cut: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _lines() * 40  # several blocks' worth when tasks are cut small
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("in.ndjson.gz" if gz else "in.ndjson")
    path.write_bytes(gzip.compress(data) if gz else data)
    files = discover([str(path)])
    if cut:  # small tasks whose line numbers are relative (as the embedded engine plans them)
        monkeypatch.setattr("ccsvi_cds.audit.sources._BLOCK", 700)
        tasks = list(iter_cut_tasks(files, chunk_bytes=3000))
    else:
        tasks = plan_tasks(files)
    first, second, _ = _both_readings(files, tasks, rules_dir, HASHES)
    assert _rows(second) == _rows(first)
    assert {r.key for r in first} == WANTED and len(first) == 11 * 40  # every spelling above was found


def test_rows_of_patients_whose_keys_collide_are_not_gathered(tmp_path: Path, rules_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32-bit hash collides: every line is then named, and only the wanted patients' rows may be kept."""
    for module in (partition, embedded):
        monkeypatch.setattr(module, "key_hash", lambda key: 7)
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(_lines()) + b"\n")
    files = discover([str(path)])
    first, second, positions = _both_readings(files, plan_tasks(files), rules_dir, frozenset({7}))
    assert [len(p) for p in positions] == [13]  # every line with a patient-keyed row, wanted or not
    assert _rows(second) == _rows(first) and len(first) == 11


def test_a_truncated_gzip_gives_the_rows_read_before_the_cut(tmp_path: Path, rules_dir: Path) -> None:
    data = b"\n".join(_lines() * 200) + b"\n"
    path = tmp_path / "in.ndjson.gz"
    packed = gzip.compress(data)
    path.write_bytes(packed[: len(packed) * 2 // 3])
    files = discover([str(path)])
    first, second, _ = _both_readings(files, plan_tasks(files), rules_dir, HASHES)
    assert 0 < len(first) < 11 * 200 and _rows(second) == _rows(first)
