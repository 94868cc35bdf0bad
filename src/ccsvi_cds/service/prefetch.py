"""Prefetch: what the service asks for, and completing what the client sent (CDS Hooks 2.0 "Prefetch").

Per key: missing -> fetch it; null -> the client has no data (2.0), unless `refetch_null_prefetch`;
OperationOutcome -> the client failed to get it: fetch it; empty Bundle -> no data; Bundle with a `next`
link -> follow the pages. ResearchStudies that orders or ResearchSubjects point to but nobody sent are read
too (whether a trial is approved decides the card). With nothing to fetch from: 412.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

import httpx

from ccsvi_cds.facts.extract import RESEARCH_STUDY_EXT

from .errors import Problem, ServiceError
from .fhir_client import DataUnavailable, FhirReader, ServerAllowlist, next_link, under
from .models import HookRequest, OrderContext
from .settings import ServiceSettings

PREFETCH_TEMPLATES: dict[str, str] = {
    "conditions": "Condition?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "researchSubjects": "ResearchSubject?patient={{context.patientId}}&_include=ResearchSubject:study",
}
STUDIES_KEY = "researchStudies"  # filled by the service itself, never a template

_MISSING = object()


def render(template: str, context: OrderContext) -> str:
    return template.replace("{{context.patientId}}", quote(context.patientId, safe=""))


class PrefetchCompleter:
    def __init__(self, settings: ServiceSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._allow = ServerAllowlist(settings.allow_fhir_servers)

    def _reader(self, req: HookRequest, needed: list[str]) -> FhirReader:
        if not req.fhirServer:
            raise ServiceError(412, Problem(
                f"prefetch {', '.join(needed)} missing or incomplete and the request names no fhirServer "
                "to fetch it from", ("prefetch",), code="incomplete"))
        if not self._allow.allows(req.fhirServer):
            raise ServiceError(400, Problem(
                "fhirServer is not among the FHIR servers this service may read from (operator setting "
                "--allow-fhir-server / CCSVI_ALLOW_FHIR_SERVERS); nothing was fetched", ("fhirServer",),
                code="forbidden"))
        token = req.fhirAuthorization.access_token if req.fhirAuthorization else None
        s = self._settings
        return FhirReader(self._client, req.fhirServer, token, s.fhir_timeout_s, s.fhir_max_pages,
                          s.fhir_max_entries)

    async def complete(self, req: HookRequest, context: OrderContext,
                       draft_orders: dict[str, Any]) -> dict[str, Any]:
        """The prefetch dict with every template key present and complete (plus `researchStudies`)."""
        sent = req.prefetch or {}
        done: dict[str, Any] = {}
        to_fetch: dict[str, str] = {}  # key -> relative query
        to_follow: dict[str, dict[str, Any]] = {}  # key -> first page with a next link
        next_links: dict[str, str] = {}
        for key, template in PREFETCH_TEMPLATES.items():
            value = sent.get(key, _MISSING)
            if value is _MISSING or (value is None and self._settings.refetch_null_prefetch):
                to_fetch[key] = render(template, context)
            elif value is None:
                done[key] = None
            elif not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
                raise ServiceError(400, Problem("a prefetch value must be a FHIR resource, a Bundle or null",
                                                ("prefetch", key), code="structure"))
            elif value["resourceType"] == "OperationOutcome":
                to_fetch[key] = render(template, context)
            elif value["resourceType"] == "Bundle" and (link := next_link(value)) is not None:
                to_follow[key], next_links[key] = value, link
            else:
                done[key] = value
        reader: FhirReader | None = None
        if to_fetch or to_follow:
            reader = self._reader(req, sorted([*to_fetch, *to_follow]))
            for key, link in next_links.items():
                if not link.startswith(("http://", "https://")) or not under(reader.base, link):
                    raise ServiceError(400, Problem("the next link of a paginated prefetch Bundle does not "
                                                    "point into fhirServer", ("prefetch", key, "link"),
                                                    code="forbidden"))
            done.update(await self._run(reader, to_fetch, to_follow))
        studies = missing_studies(draft_orders, done)
        if studies:
            if reader is None:
                reader = self._reader(req, [STUDIES_KEY])
            done[STUDIES_KEY] = await self._studies(reader, sorted(studies))
        return done

    async def _gather(self, jobs: dict[str, Coroutine[Any, Any, Any]], what: str) -> dict[str, Any]:
        """Run the reads concurrently within the deadline; the first failure cancels the others (412)."""
        try:
            async with asyncio.timeout(self._settings.fhir_timeout_s * 2):
                async with asyncio.TaskGroup() as group:
                    tasks = {key: group.create_task(job) for key, job in jobs.items()}
        except TimeoutError:
            raise _unavailable(f"{what} from fhirServer took too long") from None
        except ExceptionGroup as eg:
            first = eg.exceptions[0]
            if isinstance(first, DataUnavailable):
                raise _unavailable(str(first)) from None
            raise
        return {key: task.result() for key, task in tasks.items()}

    async def _run(self, reader: FhirReader, to_fetch: dict[str, str],
                   to_follow: dict[str, dict[str, Any]]) -> dict[str, Any]:
        jobs = {key: self._fetch(reader, key, query) for key, query in to_fetch.items()}
        jobs.update({key: reader.follow(bundle, f"prefetch {key}") for key, bundle in to_follow.items()})
        return await self._gather(jobs, "reading prefetch data")

    async def _fetch(self, reader: FhirReader, key: str, query: str) -> Any:
        return await reader.search(query, f"prefetch {key}")  # every template is a search

    async def _studies(self, reader: FhirReader, ids: list[str]) -> dict[str, Any]:
        found = await self._gather({i: reader.get(f"ResearchStudy/{quote(i, safe='')}", "linked ResearchStudy")
                                    for i in ids}, "reading the linked ResearchStudy")
        return {"resourceType": "Bundle", "type": "collection",
                "entry": [{"resource": r} for r in found.values() if r is not None]}


def _unavailable(message: str) -> ServiceError:
    return ServiceError(412, Problem(message, ("fhirServer",), code="transient"))


def _resources(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)] \
            if isinstance(entries, list) else []
    return [value]


def _study_id(ref: Any) -> str | None:
    """Id of a relative `ResearchStudy/<id>` reference (absolute or contained ones are not fetched)."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if isinstance(ref, str) and ref.startswith("ResearchStudy/"):
        rid = ref.split("/", 2)[1]
        return rid or None
    return None


def missing_studies(draft_orders: dict[str, Any], prefetch: dict[str, Any]) -> set[str]:
    """Ids of ResearchStudies referenced by draft orders or ResearchSubjects but not present."""
    wanted: set[str] = set()
    present: set[str] = set()
    everything = _resources(draft_orders) + [r for v in prefetch.values() for r in _resources(v)]
    for res in everything:
        rtype = res.get("resourceType")
        if rtype == "ResearchStudy" and isinstance(res.get("id"), str):
            present.add(res["id"])
        elif rtype == "ResearchSubject" and (sid := _study_id(res.get("study"))) is not None:
            wanted.add(sid)
        extensions = res.get("extension")
        for ext in extensions if isinstance(extensions, list) else []:
            if (isinstance(ext, dict) and ext.get("url") == RESEARCH_STUDY_EXT
                    and (sid := _study_id(ext.get("valueReference"))) is not None):
                wanted.add(sid)
    return wanted - present
