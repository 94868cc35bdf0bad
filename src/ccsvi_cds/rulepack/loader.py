"""Load a rule pack from a folder and refuse it, with every problem located, unless all of it is valid.

A pack is: pack.yaml (manifest, classifiers, trial policy, shared card parts), evidence.yaml (citations),
valuesets/*.json (FHIR ValueSets with an expansion) and one YAML file per rule (every other *.yaml).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ValidationError

from ccsvi_cds.facts.schema import MATCHABLE, MS_SUBTYPE_DOMAIN
from ccsvi_cds.rulepack.model import Citation, PackManifest, Rule
from ccsvi_cds.rulepack.source import Problem, SourceDoc, SourceError, read_doc
from ccsvi_cds.rulepack.templates import template_env

MANIFEST = "pack.yaml"
EVIDENCE = "evidence.yaml"
VALUESETS = "valuesets"
NOT_RULES = {MANIFEST, EVIDENCE}


class PackError(Exception):
    """The pack is not valid; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"rule pack has {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class ValueSetIndex:
    id: str
    title: str
    codes: dict[tuple[str, str], str]  # (system, code) -> display


@dataclass(frozen=True)
class RulePack:
    root: Path
    manifest: PackManifest
    rules: tuple[Rule, ...]
    evidence: dict[str, Citation]
    valuesets: dict[str, ValueSetIndex]
    digest: str
    files: dict[str, SourceDoc] = field(repr=False, compare=False, default_factory=dict)
    rule_files: dict[str, SourceDoc] = field(repr=False, compare=False, default_factory=dict)  # rule id -> file

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)


def load_pack(root: Path | str) -> RulePack:
    pack, problems = check_pack(root)
    if pack is None or any(p.severity == "error" for p in problems):
        raise PackError([p for p in problems if p.severity == "error"])
    return pack


def check_pack(root: Path | str) -> tuple[RulePack | None, list[Problem]]:
    """Validate everything that can be validated; return the pack only if it could be built at all."""
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        return None, [Problem(str(root), 1, 1, "rule pack folder not found", "pass the folder holding pack.yaml")]
    if not (root / MANIFEST).is_file():
        return None, [Problem(str(root / MANIFEST), 1, 1, "pack.yaml is missing", "every pack needs a pack.yaml")]

    docs: dict[str, SourceDoc] = {}

    def read(path: Path) -> SourceDoc | None:
        display = str(path)
        try:
            doc = read_doc(path, display)
        except SourceError as exc:
            problems.append(exc.problem)
            return None
        docs[path.relative_to(root).as_posix()] = doc
        return doc

    manifest_doc = read(root / MANIFEST)
    manifest = _validate(manifest_doc, PackManifest, (), problems) if manifest_doc else None

    evidence: dict[str, Citation] = {}
    evidence_doc = read(root / EVIDENCE) if (root / EVIDENCE).is_file() else None
    if evidence_doc is None and not (root / EVIDENCE).is_file():
        problems.append(Problem(str(root / EVIDENCE), 1, 1, "evidence.yaml is missing", "add the evidence library"))
    elif evidence_doc is not None:
        if not isinstance(evidence_doc.data, list):
            problems.append(evidence_doc.problem((), "evidence.yaml must be a list of citations"))
        else:
            for i, _ in enumerate(evidence_doc.data):
                cit = _validate(evidence_doc, Citation, (i,), problems)
                if cit is None:
                    continue
                if cit.id in evidence:
                    problems.append(evidence_doc.problem((i, "id"), f"duplicate evidence id '{cit.id}'",
                                                         "give each citation its own id"))
                evidence[cit.id] = cit

    evidence_ok = evidence_doc is not None  # otherwise every citation would be reported unknown too
    valuesets: dict[str, ValueSetIndex] = {}
    for path in sorted((root / VALUESETS).glob("*.json")) if (root / VALUESETS).is_dir() else []:
        doc = read(path)
        if doc is not None:
            index = _valueset(doc, path.stem, problems)
            if index is not None:
                valuesets[index.id] = index

    rules: list[Rule] = []
    rule_files: dict[str, SourceDoc] = {}
    for path in sorted(root.glob("*.yaml")):
        if path.name in NOT_RULES:
            continue
        doc = read(path)
        if doc is None:
            continue
        rule = _validate(doc, Rule, (), problems)
        if rule is None:
            continue
        if rule.id in rule_files:
            problems.append(doc.problem(("id",), f"duplicate rule id '{rule.id}' (also in {rule_files[rule.id].path.name})",
                                        "rule ids are a public contract: keep one file per id"))
            continue
        if path.stem != rule.id:
            problems.append(doc.problem(("id",), f"rule id '{rule.id}' differs from the file name '{path.name}'",
                                        f"rename the file to {rule.id}.yaml", severity="warning"))
        rule_files[rule.id] = doc
        rules.append(rule)
        if manifest is not None and evidence_ok:
            _check_rule(rule, doc, manifest, evidence, problems)

    if manifest is not None and manifest_doc is not None:
        _check_manifest(manifest, manifest_doc, valuesets, problems)
    if not rules and not problems:
        problems.append(Problem(str(root), 1, 1, "the pack has no rules", "add one YAML file per rule"))

    problems = [p if p.hint else replace(p, hint=format_hint(p.file)) for p in problems]
    if manifest is None:
        return None, problems
    pack = RulePack(root, manifest, tuple(rules), evidence, valuesets, _digest(root), docs, rule_files)
    return pack, problems


def _digest(root: Path) -> str:
    """sha256 over every file of the pack (names and bytes): what a decision record can be traced back to."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                              p.relative_to(root).parts)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def format_hint(file: str) -> str:
    """The fix for a problem no more specific hint covers: where the file's format is described."""
    path = Path(file)
    if path.parent.name == VALUESETS:
        return "a FHIR R4 ValueSet with expansion.contains [{system, code, display}]"
    if path.parent.name == "cases":
        return "see schema/cases.schema.json for the case format"
    if path.name in (MANIFEST, EVIDENCE):
        return f"see schema/{path.name.removesuffix('.yaml')}.schema.json for the format"
    return "see schema/rule.schema.json for the rule format"


def _validate(doc: SourceDoc, model: type[BaseModel], base: tuple[Any, ...], problems: list[Problem]) -> Any:
    data: Any = doc.data
    for key in base:
        data = data[key]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = base + tuple(err["loc"])
            problems.append(doc.problem(loc, _message(err), _hint(err) or format_hint(doc.display)))
        return None


def _message(err: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{err['loc'][-1]}'"
    if kind == "missing":
        return f"missing field '{where}'"
    if kind == "string_too_long" and err["loc"][-1:] == ("summary",):
        return f"summary is {len(err['input'])} characters; CDS Hooks requires under 140"
    if kind == "literal_error":
        return f"{where}: '{err['input']}' is not allowed ({err['ctx']['expected']})"
    return f"{where}: {err['msg']}"


def _hint(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "remove it or check its spelling and indentation"
    if kind == "missing":
        return "add it"
    if kind == "string_too_long":
        return "shorten it; put the rest in `detail`"
    if kind == "literal_error":
        return f"use one of {err['ctx']['expected']}"
    if kind == "string_pattern_mismatch":
        return f"it must match {err['ctx']['pattern']}"
    return ""


def _valueset(doc: SourceDoc, stem: str, problems: list[Problem]) -> ValueSetIndex | None:
    from fhir.resources.valueset import ValueSet  # heavy import: only when a pack is loaded

    data = doc.data
    if not isinstance(data, dict) or data.get("resourceType") != "ValueSet":
        problems.append(doc.problem((), "not a FHIR ValueSet", "set \"resourceType\": \"ValueSet\""))
        return None
    try:
        ValueSet.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(doc.problem(tuple(err["loc"]), f"invalid ValueSet: {err['msg']}"))
        return None
    if data.get("id") != stem:
        problems.append(doc.problem(("id",), f"ValueSet id '{data.get('id')}' differs from the file name",
                                    f"set \"id\": \"{stem}\""))
    contains = (data.get("expansion") or {}).get("contains") or []
    if not contains:
        problems.append(doc.problem(("expansion",), f"ValueSet '{stem}' has no expansion",
                                    "list its codes under expansion.contains (system, code, display)"))
        return None
    codes: dict[tuple[str, str], str] = {}
    for i, item in enumerate(contains):
        if not item.get("system") or not item.get("code"):
            problems.append(doc.problem(("expansion", "contains", i), "expansion entry without system and code"))
            continue
        codes[(item["system"], item["code"])] = item.get("display", "")
    return ValueSetIndex(stem, data.get("title") or stem, codes)


def _check_manifest(manifest: PackManifest, doc: SourceDoc, valuesets: dict[str, ValueSetIndex],
                    problems: list[Problem]) -> None:
    for i, link in enumerate(manifest.links):
        if link.url.startswith("{base_url}/patient-info/"):
            page = link.url.removeprefix("{base_url}/patient-info/")
            if not (doc.path.parent / "patient-info" / f"{page}.md").is_file():
                problems.append(doc.problem(("links", i, "url"), f"patient page '{page}' does not exist",
                                            f"add patient-info/{page}.md to the pack"))
    for name, classifier in manifest.classifiers.items():
        for i, entry in enumerate(classifier.values):
            for j, vs in enumerate(entry.code):
                if vs not in valuesets:
                    problems.append(doc.problem(("classifiers", name, "values", i, "code", j),
                                                f"unknown value set '{vs}'",
                                                f"add valuesets/{vs}.json or use one of: {', '.join(sorted(valuesets))}"))
            for j, pattern in enumerate(entry.text):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    problems.append(doc.problem(("classifiers", name, "values", i, "text", j),
                                                f"invalid regular expression '{pattern}': {exc}"))
    _check_records(manifest, doc, problems)


def _check_records(manifest: PackManifest, doc: SourceDoc, problems: list[Problem]) -> None:
    conditions = classifier_values(manifest, "condition")
    for i, entry in enumerate(manifest.records.ms_subtypes):
        if entry.condition not in conditions:
            problems.append(doc.problem(("records", "ms_subtypes", i, "condition"),
                                        f"'{entry.condition}' is not a value of the condition classifier",
                                        f"use one of: {', '.join(conditions)}"))


def classifier_values(manifest: PackManifest, classifier: str) -> tuple[str, ...]:
    """Every value a classifier names: its entries' values and its default."""
    spec = manifest.classifiers[classifier]  # type: ignore[index]
    return tuple(dict.fromkeys([v.value for v in spec.values] + [spec.default]))


def value_domain(kind: str, fieldname: str, manifest: PackManifest) -> tuple[str, ...] | None:
    """The values a fact field can take (None: free text, such as a FHIR status)."""
    spec = MATCHABLE[kind][fieldname]
    if spec is None or isinstance(spec, tuple):
        return spec
    if spec == MS_SUBTYPE_DOMAIN:
        return manifest.records.subtype_values()
    return classifier_values(manifest, spec)


def _check_where(doc: SourceDoc, loc: tuple[Any, ...], kind: str, where: dict[str, list[str]],
                 manifest: PackManifest, problems: list[Problem]) -> None:
    """Each field must exist on `kind` facts and list only values it can take."""
    for fieldname, values in where.items():
        full = loc + (fieldname,)
        if fieldname not in MATCHABLE[kind]:
            problems.append(doc.problem(full, f"{kind} facts have no field '{fieldname}'",
                                        f"use one of: {', '.join(MATCHABLE[kind])}"))
            continue
        if not values:
            problems.append(doc.problem(full, f"'{fieldname}' lists no values: it can never match",
                                        "list the values that should match"))
        domain = value_domain(kind, fieldname, manifest)
        for v in values:
            if domain is not None and v not in domain:
                problems.append(doc.problem(full, f"'{v}' is not a value of {kind}.{fieldname}",
                                            f"use one of: {', '.join(domain)}"))


def _check_rule(rule: Rule, doc: SourceDoc, manifest: PackManifest, evidence: dict[str, Citation],
                problems: list[Problem]) -> None:
    for i, alternative in enumerate(rule.when):
        for alias, pattern in alternative.items():
            _check_where(doc, ("when", i, alias, "where"), pattern.fact, pattern.where, manifest, problems)
            for k, where in enumerate(pattern.any):
                _check_where(doc, ("when", i, alias, "any", k), pattern.fact, where, manifest, problems)
    card = rule.card
    links = {link.id for link in manifest.links}
    reasons = {r.code for r in manifest.override_reasons}
    for j, ev in enumerate(card.evidence):
        if ev not in evidence:
            problems.append(doc.problem(("card", "evidence", j), f"unknown evidence id '{ev}'",
                                        "add it to evidence.yaml or fix the id"))
    for j, reason in enumerate(card.override_reasons):
        if reason not in reasons:
            problems.append(doc.problem(("card", "override_reasons", j), f"unknown override reason '{reason}'",
                                        "define it under override_reasons in pack.yaml"))
    for j, link in enumerate(card.links):
        if link in links:
            continue
        if link not in evidence:
            problems.append(doc.problem(("card", "links", j), f"unknown link '{link}'",
                                        "use an evidence id or a link id from pack.yaml"))
        elif evidence[link].link is None:
            problems.append(doc.problem(("card", "links", j), f"evidence '{link}' has no verified PMID, DOI or URL",
                                        "cite it in the detail text instead of linking it"))
    env = template_env(evidence)
    try:
        env.parse(card.detail)
    except TemplateSyntaxError as exc:
        line, col = doc.locate(("card", "detail"))
        problems.append(Problem(doc.display, line + exc.lineno, col, f"detail template: {exc.message}",
                                "check the {{ }} and {% %} blocks"))
    bound = {"order": "order", "patient": "patient"}
    for alternative in rule.when:
        bound.update({alias: pattern.fact for alias, pattern in alternative.items()})
    for j, suggestion in enumerate(card.suggestions):
        for alias, where in suggestion.when.items():
            loc = ("card", "suggestions", j, "when", alias)
            kind = bound.get(alias)
            if kind is None:
                problems.append(doc.problem(loc, f"unknown alias '{alias}'",
                                            f"use one of: {', '.join(sorted(bound))}"))
                continue
            _check_where(doc, loc, kind, where, manifest, problems)
