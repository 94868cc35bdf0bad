"""Prometheus metrics of the service, served at GET /metrics in the text exposition format.

With several uvicorn workers each process counts in its own files under PROMETHEUS_MULTIPROC_DIR (set by
`ccsvi-cds serve` to a private temporary folder before any worker starts: prometheus_client chooses its
storage when it is first imported) and a scrape sums them all, so any worker answers for the whole service.
Without that variable (the app embedded in a host process) the counts are this process's, in REGISTRY.

Labels are bounded by the deployment, never by what a client sends: endpoint names, the pack's service ids
and hooks, status codes, the pack's rule ids, prefetch keys. No patient ids, no paths, no tokens.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics import MetricWrapperBase
from starlette.types import Scope

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINT_KEY = "ccsvi.endpoint"  # set in the scope by the endpoint wrapper: discovery, hook, feedback, ...
SERVICE_KEY = "ccsvi.service"  # (service id, hook) once the path named a service of the running pack

REGISTRY = CollectorRegistry()
REQUESTS = Counter("ccsvi_requests", "HTTP requests answered, by endpoint, CDS service, hook and status code",
                   ["endpoint", "service", "hook", "status"], registry=REGISTRY)
LATENCY = Histogram("ccsvi_request_duration_seconds", "Time from request start to the end of the response",
                    ["endpoint", "service"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
CARDS = Counter("ccsvi_cards", "Cards answered to hook calls, by rule and indicator", ["rule", "indicator"],
                registry=REGISTRY)
FALLBACKS = Counter("ccsvi_prefetch_fallback_reads", "Reads from the FHIR server because the prefetch lacked "
                    "data: kind search (missing key or OperationOutcome), next-page, reference",
                    ["key", "kind"], registry=REGISTRY)
RELOADS = Counter("ccsvi_rule_pack_reloads", "Hot reloads of the rule pack, by outcome "
                  "(loaded, refused, unchanged, unstable)", ["outcome"], registry=REGISTRY)
PACK = Gauge("ccsvi_rule_pack_info", "Worker processes serving this rule pack (0: no longer served)",
             ["name", "version", "digest"], multiprocess_mode="livesum", registry=REGISTRY)

_serving: tuple[str, str, str] | None = None  # this process's pack labels, to zero them when it changes


def multiprocess_dir() -> str | None:
    """The shared folder when prometheus_client stores values in files (decided at its import)."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV)


def exposition() -> bytes:
    """The text exposition of every metric: summed over all live and dead workers in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry)


def pack_serving(identity: Mapping[str, str]) -> None:
    """This worker now serves the pack `identity` (at start-up and after each hot reload)."""
    global _serving
    labels = (identity["name"], identity["version"], identity["digest"])
    if _serving is not None and _serving != labels:
        PACK.labels(*_serving).set(0)
    PACK.labels(*labels).set(1)
    _serving = labels


def reload_outcome(status: str) -> None:
    RELOADS.labels(status).inc()


# Label children cached: every label value comes from the deployment (routes, the pack), so the sets are
# small, and looking a child up costs more than the increment itself.
@functools.lru_cache(maxsize=4096)
def _child(metric: MetricWrapperBase, *labels: str) -> MetricWrapperBase:
    return metric.labels(*labels)


def cards_answered(cards: Iterable[tuple[str | None, str]]) -> None:
    """(rule id, indicator) of each card answered."""
    for rule, indicator in cards:
        _child(CARDS, rule or "", indicator).inc()  # type: ignore[attr-defined]


def fallback_reads(search: Iterable[str] = (), next_page: Iterable[str] = (), referenced: int = 0) -> None:
    """Reads from a FHIR server: a search per prefetch key the client left missing (or sent as an
    OperationOutcome), the pages after the one it sent, and resources read by reference."""
    for key in search:
        FALLBACKS.labels(key, "search").inc()
    for key in next_page:
        FALLBACKS.labels(key, "next-page").inc()
    if referenced:
        FALLBACKS.labels("referenced", "reference").inc(referenced)


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def worker_started() -> None:
    """Forget live gauges of workers that died without saying so (SIGKILL, OOM): uvicorn restarts them and
    gives no hook to the supervisor, so each new worker sweeps for the others."""
    path = multiprocess_dir()
    if path is None:
        return
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(match.group(1)), path)
        except PermissionError:
            pass  # alive, someone else's process


def worker_stopped() -> None:
    """This worker's live gauges (the pack it serves) leave the sums; its counters stay counted."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)


def request_done(scope: Scope, status: int, seconds: float) -> None:
    """Count one HTTP request (also shed and unrouted ones) by endpoint, service, hook and status, and observe
    its duration. Called by the access log, which already times every request."""
    endpoint = scope.get(ENDPOINT_KEY, "preflight" if scope["method"] == "OPTIONS" else "other")
    service, hook = scope.get(SERVICE_KEY, ("", ""))
    _child(REQUESTS, endpoint, service, hook, str(status) if status else "none").inc()  # type: ignore[attr-defined]
    _child(LATENCY, endpoint, service).observe(seconds)  # type: ignore[attr-defined]
