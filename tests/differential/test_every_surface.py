"""One reading of FHIR for every surface: each scenario through every entry shape gives the same decisions.

Scenarios: every rule case (rules/cases/*.yaml), every file in fhir_examples/, and the regressions here (each
a divergence found between surfaces once). Shapes: `ccsvi-cds check`; the service over real HTTP with the
patient's data in prefetch, and without prefetch (read from a local FHIR server); the audit on the data as a
Bundle and as NDJSON; `rules diff`. The reference is the core's own evaluation of the scenario. One pytest
item per scenario and shape, so a failure names both. A decision is (rule, indicator, order, patient);
`rules diff` does not report patients, so there it is (rule, indicator, order).
"""

from __future__ import annotations

import copy
import json
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ccsvi_cds.audit.run import AuditOptions, run_audit
from ccsvi_cds.authoring.cases import load_cases
from ccsvi_cds.authoring.diff import collect, decide
from ccsvi_cds.check_cli import check
from ccsvi_cds.evaluate import Evaluator, OrderScreen
from ccsvi_cds.facts.records import flatten, is_hook_request, patient_of, request_items
from ccsvi_cds.facts.references import rewrite_references
from ccsvi_cds.rulepack import RulePack, load_pack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import GOOD_TOKEN, FakeFhir, Service

EHR_BASES = ("https://ehr.example.org/fhir", "http://ehr.example.org/fhir")  # the EHR's own server in the data
Decision = tuple[str, str, str, str | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    data: Any  # a CDS Hooks request, or FHIR JSON (a resource, a Bundle, a list of resources)

    @property
    def is_request(self) -> bool:
        return is_hook_request(self.data)


def _scenarios() -> list[Scenario]:
    out = [Scenario(f"example/{p.stem}", json.loads(p.read_text())) for p in sorted((ROOT / "fhir_examples").glob("*.json"))]
    out += [Scenario(f"regression/{p.stem}", json.loads(p.read_text()))
            for p in sorted((Path(__file__).parent / "regressions").glob("*.json"))]
    cases, problems = load_cases(RULES, None)
    assert not problems, problems
    for case in cases:
        spec = case.case.input
        if spec.file is not None:
            data = json.loads((case.base / spec.file).read_text())
        else:
            data = spec.request if spec.request is not None else spec.resources
        out.append(Scenario(f"case/{Path(case.file).stem}[{case.index}]", data))
    return out


SCENARIOS = _scenarios()
FHIR_DATA = [s for s in SCENARIOS if not s.is_request]


# ----------------------------------------------------------------------------------------------- decisions


@pytest.fixture(scope="module")
def pack() -> RulePack:
    return load_pack(RULES)


@pytest.fixture(scope="module")
def evaluator(pack: RulePack) -> Evaluator:
    return Evaluator(pack)


def from_cards(cards: list[dict[str, Any]], pack: RulePack) -> list[Decision]:
    out = []
    for card in cards:
        rule = pack.rule(card["extension"]["org.ccsvi-cds.rule"]["id"])
        order = card["extension"]["org.ccsvi-cds.matched"][rule.order]
        out.append((rule.id, card["indicator"], order["ref"], order.get("patient")))
    return sorted(out)


def reference(evaluator: Evaluator, scenario: Scenario) -> list[Decision]:
    result = evaluator.evaluate_document(scenario.data, "scenario")
    return sorted((f.rule_id, f.indicator, f.order_ref, f.patient_ref) for f in result.findings)


def test_scenarios_cover_every_rule_firing_and_silent(evaluator: Evaluator) -> None:
    """The differential is only worth what its scenarios exercise: every rule fires somewhere, and some
    scenarios are silent."""
    fired = {d[0] for s in SCENARIOS for d in reference(evaluator, s)}
    assert fired == {r.id for r in evaluator.pack.rules}
    assert any(not reference(evaluator, s) for s in SCENARIOS)


def test_every_order_with_a_finding_passes_the_audits_screen(evaluator: Evaluator) -> None:
    """The audit joins only patients with an order the screen passes: a finding on any other would be lost."""
    verdicts: Counter[OrderScreen] = Counter()
    for scenario in SCENARIOS:
        items = request_items(scenario.data) if scenario.is_request else \
            [scenario.data] if isinstance(scenario.data, dict) else scenario.data
        located, _, _ = flatten(items)
        orders = {f"ServiceRequest/{it.resource.get('id')}": it.resource for it in located
                  if it.resource.get("resourceType") == "ServiceRequest"}
        verdicts.update(evaluator.screen(r) for r in orders.values())
        for decision in reference(evaluator, scenario):
            assert evaluator.screen(orders[decision[2]]) is OrderScreen.CANDIDATE, (scenario.name, decision)
    assert verdicts[OrderScreen.NO_RULE] > 5 and verdicts[OrderScreen.CANDIDATE] > 40  # it does filter


# ----------------------------------------------------------------------------------------------- check


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_check(scenario: Scenario, evaluator: Evaluator, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(scenario.data))
    result = CliRunner().invoke(check, [str(path), "--rules", str(RULES), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert from_cards(json.loads(result.stdout)["cards"], evaluator.pack) == reference(evaluator, scenario)


# ----------------------------------------------------------------------------------------------- service


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, FakeFhir]]:
    fhir = FakeFhir()
    tmp = tmp_path_factory.mktemp("svc")
    svc = Service({"CCSVI_DB_PATH": str(tmp / "service.sqlite3")}, ["--allow-fhir-server", fhir.fhir],
                  tmp / "service.log")
    svc.start()
    yield svc, fhir
    svc.stop()
    svc.client.close()
    fhir.close()


def _resources(data: Any) -> list[dict[str, Any]]:
    """The scenario's resources as an EHR would hold them: out of their Bundles, urn:uuid references
    resolved to the ids the fullUrls give."""
    items = request_items(data) if is_hook_request(data) else [data] if isinstance(data, dict) else data
    located, aliases, _ = flatten(items)
    out = []
    for item in located:
        res = copy.deepcopy(item.resource)
        rewrite_references(res, aliases)
        out.append(res)
    return out


def _load_server(fhir: FakeFhir, resources: list[dict[str, Any]]) -> None:
    fhir.reset()
    for res in resources:
        rtype = res.get("resourceType")
        if rtype == "ResearchStudy" and isinstance(res.get("id"), str):
            fhir.studies[res["id"]] = res
        elif rtype in ("Condition", "Procedure", "ResearchSubject"):
            patient = patient_of(res, rtype)
            if patient:
                fhir.data.setdefault(patient.split("/", 1)[1], {}).setdefault(rtype, []).append(res)


def _requests(scenario: Scenario, with_prefetch: bool, fhir: FakeFhir) -> list[dict[str, Any]]:
    """The scenario as the CDS Hooks requests an EHR would send: a request as it is; FHIR data as one
    order-sign request per patient with orders (its ServiceRequests as draft orders)."""
    if scenario.is_request:
        requests = [copy.deepcopy(scenario.data)]
    else:
        by_patient: dict[str, list[dict[str, Any]]] = {}
        for res in _resources(scenario.data):
            if res.get("resourceType") == "ServiceRequest" and (patient := patient_of(res, "ServiceRequest")):
                by_patient.setdefault(patient.split("/", 1)[1], []).append(res)
        requests = []
        for patient, orders in sorted(by_patient.items()):
            prefetch = {key: {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": r} for r in fhir.data.get(patient, {}).get(rtype, [])]}
                        for key, rtype in (("conditions", "Condition"), ("procedures", "Procedure"),
                                           ("researchSubjects", "ResearchSubject"))}
            requests.append({"hook": "order-sign", "context": {
                "userId": "Practitioner/dr-1", "patientId": patient,
                "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": o} for o in orders]}}, "prefetch": prefetch})
    for req in requests:
        req["hookInstance"] = str(uuid.uuid4())
        req["fhirServer"] = fhir.fhir
        req["fhirAuthorization"] = {"access_token": GOOD_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "user/*.read", "subject": "ccsvi-cds"}
        if not with_prefetch:
            req.pop("prefetch", None)
    return requests


def _service_decisions(scenario: Scenario, with_prefetch: bool, ehr: tuple[Service, FakeFhir],
                       pack: RulePack) -> list[Decision]:
    svc, fhir = ehr
    _load_server(fhir, _resources(scenario.data))
    cards: list[dict[str, Any]] = []
    for req in _requests(scenario, with_prefetch, fhir):
        body = json.dumps(req)
        for base in EHR_BASES:  # absolute references into the EHR's FHIR server point at the test's
            body = body.replace(base, fhir.fhir)
        resp = svc.post(f"/cds-services/ccsvi-{req['hook']}", body)
        assert resp.status_code == 200, resp.text
        cards += resp.json()["cards"]
    return from_cards(cards, pack)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_service_with_prefetch(scenario: Scenario, evaluator: Evaluator, ehr: tuple[Service, FakeFhir]) -> None:
    assert _service_decisions(scenario, True, ehr, evaluator.pack) == reference(evaluator, scenario)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_service_reading_the_fhir_server(scenario: Scenario, evaluator: Evaluator,
                                         ehr: tuple[Service, FakeFhir]) -> None:
    assert _service_decisions(scenario, False, ehr, evaluator.pack) == reference(evaluator, scenario)


# ----------------------------------------------------------------------------------------------- audit


def _as_bundle(data: Any, path: Path) -> Path:
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        path.write_text(json.dumps(data))
    else:
        resources = data if isinstance(data, list) else [data]
        path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                    "entry": [{"resource": r} for r in resources]}))
    return path


def _as_ndjson(data: Any, path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in _resources(data)))
    return path


def _audit(path: Path, out: Path) -> list[Decision]:
    run_audit(AuditOptions([str(path)], out, RULES, workers=1))
    lines = (out / "findings.ndjson").read_text().splitlines()
    return sorted((f["rule"], f["indicator"], f["serviceRequest"], f["patient"]) for f in map(json.loads, lines))


@pytest.mark.parametrize("write", [_as_bundle, _as_ndjson], ids=["bundle", "ndjson"])
@pytest.mark.parametrize("scenario", FHIR_DATA, ids=lambda s: s.name)
def test_audit(scenario: Scenario, write: Callable[[Any, Path], Path], evaluator: Evaluator, tmp_path: Path) -> None:
    path = write(scenario.data, tmp_path / ("input.json" if write is _as_bundle else "input.ndjson"))
    assert _audit(path, tmp_path / "out") == reference(evaluator, scenario)


# ----------------------------------------------------------------------------------------------- rules diff


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_rules_diff(scenario: Scenario, evaluator: Evaluator, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    if scenario.is_request:
        path.write_text(json.dumps(scenario.data))
    else:
        _as_bundle(scenario.data, path)
    decisions, _, _ = decide(evaluator, collect([str(path)]))
    found = sorted((c.rule, c.indicator, order) for (_, order), cards in decisions.items() for c in cards)
    assert found == sorted(d[:3] for d in reference(evaluator, scenario))
