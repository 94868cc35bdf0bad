"""`rules lint`: each ValueSet's pinned expansion must agree with its compose, wherever that is decidable here.

The classifiers match the expansion (plus the compose filters they can decide: facts/terminology.py), so an
expansion that drifts from its compose silently changes what fires. Checked, without a terminology server:
- every expansion code is covered by an include of its system (a listed concept, or all filters of one
  include holding), unless that system has an include only a server could decide (SNOMED CT `is-a`);
- every listed concept, and the concept an `is-a` filter names, is in the expansion;
- a `regex` filter made only of literal characters and character classes (an ICD-10-PCS character pattern)
  generates no code the expansion lacks;
- `expansion.total`, when given, is the number of codes listed.
Systems and codes are compared canonically (https, OIDs, ICD case and dot do not matter).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccsvi_cds.facts.terminology import canonical_coding, canonical_system, code_filter, normalize_code
from ccsvi_cds.rulepack.loader import VALUESETS, RulePack
from ccsvi_cds.rulepack.source import Problem, SourceDoc

MAX_ENUMERATED = 10_000
_CLASS = re.compile(r"\[([^\]\\^]+)\]|([A-Za-z0-9])")


def enumerate_pattern(pattern: str) -> list[str] | None:
    """Every string a pattern of literals and [classes] matches, or None if it is anything richer."""
    body = pattern.removeprefix("^").removesuffix("$")
    choices: list[str] = []
    pos = 0
    while pos < len(body):
        m = _CLASS.match(body, pos)
        if m is None:
            return None
        if m.group(2):
            choices.append(m.group(2))
        else:
            chars = re.sub(r"(\w)-(\w)", lambda r: "".join(chr(c) for c in range(ord(r[1]), ord(r[2]) + 1)), m[1])
            if not chars.isalnum():
                return None
            choices.append(chars)
        pos = m.end()
    total = 1
    for c in choices:
        total *= len(c)
    if total > MAX_ENUMERATED:
        return None
    return ["".join(p) for p in itertools.product(*choices)]


def _include_test(system: str, include: dict[str, Any]) -> tuple[Callable[[str], bool] | None, bool]:
    """(predicate for the include, decidable here?)."""
    if isinstance(include.get("concept"), list):
        codes = {normalize_code(system, str(c.get("code", ""))) for c in include["concept"] if isinstance(c, dict)}
        return codes.__contains__, True
    filters = [f for f in include.get("filter") or [] if isinstance(f, dict)]
    tests = [code_filter(system, str(f.get("property", "")), str(f.get("op", "")), str(f.get("value", "")))
             for f in filters]
    if not tests or any(t is None for t in tests):
        return None, False
    decided = [t for t in tests if t is not None]
    return (lambda code: all(t(code) for t in decided)), True


def check_valueset(doc: SourceDoc) -> list[Problem]:
    data = doc.data if isinstance(doc.data, dict) else {}
    contains = [c for c in (data.get("expansion") or {}).get("contains") or [] if isinstance(c, dict)]
    problems: list[Problem] = []
    total = (data.get("expansion") or {}).get("total")
    if isinstance(total, int) and total != len(contains):
        problems.append(doc.problem(("expansion", "total"), f"expansion.total is {total} but {len(contains)} "
                                    "codes are listed", f"set \"total\": {len(contains)}"))
    compose = data.get("compose")
    if not isinstance(compose, dict):
        return problems
    expansion = {canonical_coding(str(c.get("system", "")), str(c.get("code", ""))) for c in contains}
    tests: dict[str, list[Callable[[str], bool]]] = {}
    open_systems: set[str] = set()
    for i, include in enumerate(compose.get("include") or []):
        if not isinstance(include, dict) or not isinstance(include.get("system"), str):
            continue
        system = canonical_system(include["system"])
        test, decidable = _include_test(system, include)
        if not decidable:
            open_systems.add(system)
        elif test is not None:
            tests.setdefault(system, []).append(test)
        for j, concept in enumerate(include.get("concept") or []):
            code = normalize_code(system, str((concept or {}).get("code", "")))
            if (system, code) not in expansion:
                problems.append(doc.problem(("compose", "include", i, "concept", j, "code"),
                                            f"compose lists {code} but the expansion does not",
                                            "add it to expansion.contains, or remove it from the compose"))
        for k, flt in enumerate(include.get("filter") or []):
            if not isinstance(flt, dict):
                continue
            op, value = flt.get("op"), str(flt.get("value", ""))
            if op == "is-a" and (system, normalize_code(system, value)) not in expansion:
                problems.append(doc.problem(("compose", "include", i, "filter", k, "value"),
                                            f"the expansion lacks {value}, the concept this is-a filter names",
                                            "is-a includes the concept itself: add it to expansion.contains"))
            if op == "regex" and flt.get("property") == "code":
                generated = enumerate_pattern(value)
                missing = [c for c in generated or [] if (system, c) not in expansion]
                if missing:
                    problems.append(doc.problem(("compose", "include", i, "filter", k, "value"),
                                                f"the expansion lacks {len(missing)} code(s) the pattern {value} "
                                                f"generates: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                                                "list every code the pattern generates in expansion.contains"))
    for n, item in enumerate(contains):
        system, code = canonical_coding(str(item.get("system", "")), str(item.get("code", "")))
        if system in open_systems or any(t(code) for t in tests.get(system, [])):
            continue
        problems.append(doc.problem(("expansion", "contains", n, "code"),
                                    f"{code} ({system}) is in the expansion but not in the compose",
                                    "add it to the compose (a concept, or a filter that covers it), or remove it"))
    return problems


def check_valuesets(pack: RulePack) -> list[Problem]:
    problems: list[Problem] = []
    for rel, doc in sorted(pack.files.items()):
        if rel.startswith(f"{VALUESETS}/") and Path(rel).stem in pack.valuesets:
            problems += check_valueset(doc)
    return problems
