"""Cost of one order-sign evaluation in-process, against its floor: parsing the JSON and a raw engine session.

The request is fhir_examples/cds-hooks-order-sign.json (3 draft orders, 5 Conditions in prefetch). The three
measurements are interleaved round by round so that noise on this shared machine hits them alike; the
ratio is what to read, not the absolute figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from durable import engine as durable

from ccsvi_cds.engine.session import END_KIND, END_RULE
from ccsvi_cds.evaluate import Evaluator
from ccsvi_cds.rulepack import load_pack
from ccsvi_cds.rulepack.compiler import compile_rules

ROOT = Path(__file__).resolve().parents[1]
REQUEST = ROOT / "fhir_examples" / "cds-hooks-order-sign.json"
ROUNDS, PER_ROUND = 40, 250


class _Host(durable.Host):
    def _run(self) -> None:
        return None


def raw_engine(pack_rules: dict, facts: list[dict]) -> Callable[[], None]:
    """The same facts through durable_rules directly: the engine's own floor."""
    host = _Host()
    rules = {name: {**spec, "run": lambda c: None} for name, spec in pack_rules.items()}
    rules[END_RULE] = {"all": [{"end": {"kind": END_KIND}}], "run": lambda c: None}
    host.register_rulesets({"raw": rules})
    counter = iter(range(10**9))

    def run() -> None:
        sid = str(next(counter))
        for n, fact in enumerate(facts):
            try:
                host.assert_fact("raw", {**{k: v for k, v in fact.items() if v is not None}, "sid": sid, "n": n})
            except durable.MessageNotHandledException:
                pass
        host.assert_fact("raw", {"sid": sid, "kind": END_KIND, "n": len(facts)})
        host.delete_state("raw", sid)

    return run


def measure(fns: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            for _ in range(PER_ROUND):
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append((time.perf_counter_ns() - t0) / 1000)
    return samples


def main() -> None:
    body = REQUEST.read_bytes()
    pack = load_pack(ROOT / "rules")
    evaluator = Evaluator(pack)
    validating = Evaluator(pack, validate=True)

    def full(ev: Evaluator = evaluator) -> object:
        result = ev.evaluate_request(orjson.loads(body))
        assert len(result.cards) == 1
        return orjson.dumps({"cards": result.cards})

    # the facts the evaluator asserts for this request, to drive the raw engine with identical work
    records = evaluator.read_request(orjson.loads(body))
    group = evaluator._project.project(records, next(iter(records.patients.values())), [])

    fns: dict[str, Callable[[], object]] = {
        "parse (orjson)": lambda: orjson.loads(body),
        "raw durable_rules session": raw_engine(compile_rules(pack.rules), group.facts),
        "full evaluation": full,
    }
    samples = measure(fns)
    validation = []
    for _ in range(400):
        t0 = time.perf_counter_ns()
        full(validating)
        validation.append((time.perf_counter_ns() - t0) / 1000)

    p50 = {name: statistics.median(s) for name, s in samples.items()}
    print(f"request: {REQUEST.name} ({len(body)} bytes, 3 draft orders, 5 Conditions, {len(group.facts)} facts)")
    print(f"{'measurement':45s} {'p50 us':>9s} {'p95 us':>9s}")
    for name, s in samples.items():
        print(f"{name:45s} {p50[name]:9.1f} {statistics.quantiles(s, n=20)[18]:9.1f}")
    print(f"{'full evaluation + fhir.resources validation':45s} {statistics.median(validation):9.1f} "
          f"{statistics.quantiles(validation, n=20)[18]:9.1f}")
    floor = p50["parse (orjson)"] + p50["raw durable_rules session"]
    ratio = p50["full evaluation"] / floor
    print(f"ratio full / (parse + raw engine) = {ratio:.2f}x  (target <= 3x)")
    print(f"full evaluation p50 = {p50['full evaluation'] / 1000:.3f} ms  (target < 1 ms)")
    print(f"validation adds {statistics.median(validation) / p50['full evaluation']:.1f}x to the evaluation")


if __name__ == "__main__":
    main()
