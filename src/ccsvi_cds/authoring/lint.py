"""`rules lint`: everything wrong with a pack, each with file:line:column, what is wrong and how to fix it.

The loader (`check_pack`) already reports schema errors, unknown value sets / evidence / override reasons,
value sets without an expansion, summaries of 140+ characters, bad indicators and duplicate ids; this module
adds what a loader need not refuse but an author must know: codes in unknown systems, template fields that
do not exist, rules that can never fire, value sets nothing uses, and problems in the test cases.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ccsvi_cds.authoring.cases import LoadedCase, load_cases, run_cases
from ccsvi_cds.authoring.evidence_check import check_card_figures
from ccsvi_cds.authoring.reachability import check_reachability
from ccsvi_cds.authoring.render_check import check_rendering
from ccsvi_cds.authoring.template_check import check_templates
from ccsvi_cds.authoring.valueset_check import check_valuesets
from ccsvi_cds.rulepack.loader import VALUESETS, RulePack, check_pack
from ccsvi_cds.rulepack.source import Problem, SourceDoc

KNOWN_SYSTEMS: dict[str, str] = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "WHO ICD-10",
    "http://id.who.int/icd/release/11/mms": "ICD-11 MMS",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://www.cms.gov/Medicare/Coding/ICD10": "ICD-10-PCS",
    "http://loinc.org": "LOINC",
}


@dataclass
class LintResult:
    pack: RulePack | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return self.pack is not None and not self.errors


def valueset_docs(pack: RulePack) -> dict[str, SourceDoc]:
    return {Path(rel).stem: doc for rel, doc in pack.files.items() if rel.startswith(f"{VALUESETS}/")}


def check_codes(pack: RulePack) -> list[Problem]:
    """Every code in a value set must be in a code system the pack knows (a typo silently matches nothing)."""
    problems: list[Problem] = []
    for doc in valueset_docs(pack).values():
        data = doc.data if isinstance(doc.data, dict) else {}
        places = [(("expansion", "contains", i), item) for i, item in
                  enumerate((data.get("expansion") or {}).get("contains") or [])]
        places += [(("compose", "include", i), item) for i, item in
                   enumerate((data.get("compose") or {}).get("include") or [])]
        for loc, item in places:
            system = item.get("system") if isinstance(item, dict) else None
            if not isinstance(system, str) or system in KNOWN_SYSTEMS:
                continue
            close = difflib.get_close_matches(system, KNOWN_SYSTEMS, n=1, cutoff=0.6)
            hint = (f"did you mean {close[0]} ({KNOWN_SYSTEMS[close[0]]})?" if close else
                    "use one of: " + ", ".join(f"{url} ({name})" for url, name in KNOWN_SYSTEMS.items()))
            code = item.get("code", "")
            problems.append(doc.problem(loc + ("system",), f"code {code!r} has an unknown system {system!r}"
                                        if code else f"unknown code system {system!r}", hint))
    return problems


def check_unused_valuesets(pack: RulePack) -> list[Problem]:
    used = {vs for c in pack.manifest.classifiers.values() for entry in c.values for vs in entry.code}
    return [doc.problem(("id",), f"value set '{vid}' is referenced by no classifier",
                        "use it under classifiers in pack.yaml, or delete the file", severity="warning")
            for vid, doc in sorted(valueset_docs(pack).items()) if vid in pack.valuesets and vid not in used]


def check_case_coverage(pack: RulePack, cases: list[LoadedCase], docs: dict[str, SourceDoc]) -> list[Problem]:
    """Rules no test case makes fire: they may be unreachable in practice, and nothing shows they work."""
    report = run_cases(pack, cases)
    problems = []
    for rid in report.never_fired:
        doc = docs.get(rid)
        if doc is not None:
            msg = (f"no test case fires rule '{rid}'" if cases else
                   f"rule '{rid}' has no test cases, so nothing shows it can fire")
            problems.append(doc.problem(("id",), msg, f"add a case that fires it to cases/{rid}.yaml "
                                                       "(`ccsvi-cds rules test` shows what fires)",
                                        severity="warning"))
    return problems


def lint_pack(root: Path | str, *, run_case_inputs: bool = True) -> LintResult:
    """All problems of the pack at `root`. `run_case_inputs=False` skips the one check that evaluates
    (never fired by a case), e.g. off the event-loop thread where no engine may be built."""
    root = Path(root)
    pack, problems = check_pack(root)
    if pack is None:
        return LintResult(None, sorted(set(problems)))
    docs = pack.rule_files
    problems += check_codes(pack)
    problems += check_unused_valuesets(pack)
    problems += check_valuesets(pack)
    for rule in pack.rules:
        doc = docs.get(rule.id)
        if doc is not None:
            problems += check_templates(pack, rule, doc)
            problems += check_reachability(pack, rule, doc)
            problems += check_card_figures(pack, rule, doc)
    cases, case_problems = load_cases(root, pack)
    problems += case_problems
    problems += check_rendering(pack, cases, problems)  # cards render with the cases' and synthetic facts
    if run_case_inputs and not any(p.severity == "error" for p in problems):
        problems += check_case_coverage(pack, cases, docs)
    return LintResult(pack, sorted(set(problems)))


def format_problems(result: LintResult) -> str:
    lines = [str(p) for p in result.problems]
    n_err, n_warn = len(result.errors), len(result.warnings)
    if result.pack is not None:
        pack = result.pack
        what = f"{pack.name} {pack.version} ({len(pack.rules)} rules, digest {pack.digest[:12]})"
    else:
        what = "the pack"
    lines.append(f"{what}: {n_err} error(s), {n_warn} warning(s)" if lines else f"{what}: clean")
    return "\n".join(lines)
