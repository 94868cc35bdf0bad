"""Prefetch: what the service asks for, and completing what the client sent (CDS Hooks 2.0 "Prefetch").

Per key: missing -> fetch it; null -> the client has no data (2.0), unless `refetch_null_prefetch`;
OperationOutcome -> the client failed to get it: fetch it; empty Bundle -> no data; Bundle with a `next`
link -> follow the pages. The templates are derived from what the rules read (DataRequirements), in the
spec's recommended subset (no _include). Resources the records core follows by reference but nobody sent (a
ResearchStudy an order is linked to: whether it is approved decides the card) are read by reference: from
fhirServer (with its token), or from another allowlisted server for an absolute reference (without the
token). With nothing to fetch from: 412.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ccsvi_cds.facts.extract import unresolved
from ccsvi_cds.facts.records import Records
from ccsvi_cds.facts.references import Ref

from . import metrics
from .errors import Problem, ServiceError
from .fhir_client import DataUnavailable, FhirReader, ServerAllowlist, next_link, under
from .models import HookRequest, OrderContext
from .settings import ServiceSettings

if TYPE_CHECKING:
    from .state import ActiveRules

REFERENCED_KEY = "referenced"  # filled by the service itself with what it read by reference, never a template

_MISSING = object()


def render(template: str, context: OrderContext) -> str:
    return template.replace("{{context.patientId}}", quote(context.patientId, safe=""))


class PrefetchCompleter:
    def __init__(self, settings: ServiceSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._allow = ServerAllowlist(settings.allow_fhir_servers)

    def _reader(self, req: HookRequest, needed: list[str]) -> FhirReader:
        """A reader for the request's fhirServer, with its token (412 without one, 400 if not allowed)."""
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

    async def complete(self, req: HookRequest, context: OrderContext, active: ActiveRules,
                       raw_context: dict[str, Any]) -> tuple[dict[str, Any], Records]:
        """The prefetch dict with every template key present and complete (plus what was read by reference),
        and the request's records read from it (so the evaluation does not read them again)."""
        sent = req.prefetch or {}
        done: dict[str, Any] = {}
        to_fetch: dict[str, str] = {}  # key -> relative query
        to_follow: dict[str, dict[str, Any]] = {}  # key -> first page with a next link
        next_links: dict[str, str] = {}
        evaluator = active.evaluator
        for key, template in active.prefetch_templates.items():
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
        for key, value in sent.items():  # data the EHR sent unasked (e.g. its linked studies) is data too
            if key not in done and key not in to_fetch and key not in to_follow and isinstance(value, dict) \
                    and isinstance(value.get("resourceType"), str) and value["resourceType"] != "OperationOutcome":
                done[key] = value
        reader: FhirReader | None = None
        if to_fetch or to_follow:
            reader = self._reader(req, sorted([*to_fetch, *to_follow]))
            for key, link in next_links.items():
                if not link.startswith(("http://", "https://")) or not under(reader.base, link):
                    raise ServiceError(400, Problem("the next link of a paginated prefetch Bundle does not "
                                                    "point into fhirServer", ("prefetch", key, "link"),
                                                    code="forbidden"))
            metrics.fallback_reads(search=to_fetch, next_page=to_follow)
            done.update(await self._run(reader, to_fetch, to_follow))
        request = {"hook": req.hook, "context": raw_context, "prefetch": done}
        records = evaluator.read_request(request)
        missing = unresolved(records, evaluator.requirements.by_reference)
        if missing:
            done[REFERENCED_KEY] = await self._referenced(req, reader, missing)
            records = evaluator.read_request(request)  # rare: read again, so what was fetched is checked too
        return done, records

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

    async def _referenced(self, req: HookRequest, reader: FhirReader | None, refs: list[Ref]) -> dict[str, Any]:
        """Read each reference where it points: fhirServer for relative ones and absolute ones under it (with
        the token); another allowlisted server for other absolute ones (without it); never elsewhere."""
        jobs: dict[str, Coroutine[Any, Any, Any]] = {}
        for ref in refs:
            if ref.key is None:
                continue
            if ref.url is None or (req.fhirServer and under(req.fhirServer, ref.url)):
                reader = reader or self._reader(req, [REFERENCED_KEY])
                jobs[ref.key] = reader.get(ref.url or quote(ref.key, safe="/"), f"referenced {ref.key.split('/')[0]}")
            elif self._allow.allows(ref.url):
                s = self._settings
                other = FhirReader(self._client, ref.url, None, s.fhir_timeout_s, s.fhir_max_pages, s.fhir_max_entries)
                jobs[ref.key] = other.get(ref.url, f"referenced {ref.key.split('/')[0]}")
            # else: a server the operator did not allow; the reference stays dangling (and is reported)
        metrics.fallback_reads(referenced=len(jobs))
        found = await self._gather(jobs, "reading referenced resources") if jobs else {}
        return {"resourceType": "Bundle", "type": "collection",
                "entry": [{"resource": r} for r in found.values() if r is not None]}


def _unavailable(message: str) -> ServiceError:
    return ServiceError(412, Problem(message, ("fhirServer",), code="transient"))
