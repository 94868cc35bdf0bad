"""The ASGI application: routes, lifespan (one evaluator per worker process) and middleware.

Starlette rather than FastAPI: the request body is parsed once with orjson and checked by the pydantic
models in `models.py`, so every refusal is our OperationOutcome (with the JSON location) instead of a
framework error page, and the hot path stays short.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccsvi_cds.rulepack.model import ServiceSpec

from . import logs, metrics
from .bounded import read_bounded
from .discovery import discovery_document, services_of
from .errors import Problem, ServiceError, error_response, outcome_response
from .feedback_store import Store
from .hook import HookHandler
from .http_guard import BACKLOG_KEY
from .jwt_auth import JwtVerifier
from .models import FeedbackRequest, parse_json, validate
from .prefetch import PrefetchCompleter
from .replay import ReplayCache, replay_path
from .settings import ServiceSettings
from .state import RuleState

JSON = "application/json"
log = logs.log


@dataclass
class Runtime:
    """Everything a request needs; built in the lifespan, i.e. inside the worker process."""

    settings: ServiceSettings
    rules: RuleState
    store: Store
    client: httpx.AsyncClient
    verifier: JwtVerifier | None
    hooks: HookHandler


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


Endpoint = Callable[[Request, Runtime], Awaitable[Response]]


NOT_STARTED = ServiceError(503, Problem(
    "the CDS service has not been started: a host application that mounts it must run its lifespan "
    "(see README, Embedding)", code="transient"))


def guarded(endpoint: Endpoint, name: str) -> Callable[[Request], Awaitable[Response]]:
    """ServiceError -> its OperationOutcome; anything else -> a 500 OperationOutcome, logged without data.
    `name` labels the request in the metrics."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        request.scope[metrics.ENDPOINT_KEY] = name
        try:
            runtime = getattr(request.app.state, "runtime", None)
            if runtime is None:
                raise NOT_STARTED
            return await endpoint(request, runtime)
        except ServiceError as exc:
            request.scope.setdefault("ccsvi.log", {})["problem"] = exc.problems[0].message[:200]
            return error_response(exc)
        except ClientDisconnect:  # the client went away while sending: nobody to answer
            request.scope.setdefault("ccsvi.log", {})["problem"] = "client disconnected"
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            log.error("internal error", extra={"error": type(exc).__name__, "where": where,
                                               "path": request.url.path})
            return outcome_response(500, [Problem("internal error; the service log has the details",
                                                  code="exception")])

    return run


async def read_body(request: Request, settings: ServiceSettings) -> bytes:
    """The body, refused with 413 as soon as it exceeds `max_body_bytes` (declared or actual), and with 408
    (connection closed) if it has not all arrived `body_timeout_s` after the head: a client that trickles its
    body must not hold a worker's request slot (the head has its own timeout, http_guard.py)."""
    limit, seconds = settings.max_body_bytes, settings.body_timeout_s
    try:
        async with asyncio.timeout(seconds):
            return await read_bounded(request.stream(), request.headers.get("content-length"), limit,
                                      lambda: ServiceError(413, Problem(f"request body exceeds {limit} bytes",
                                                                        code="too-costly")))
    except TimeoutError:
        raise ServiceError(408, Problem(f"the request body did not arrive within {seconds:g} s", code="timeout"),
                           headers={"Connection": "close"}) from None


def route_path(scope: Scope) -> str:
    """The path inside this app: without the prefix a host application mounted it at (scope root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


async def authenticate(request: Request, rt: Runtime) -> None:
    """JWT `aud` must be the URL called: base_url (which includes any mount prefix) + the path in this app."""
    if rt.verifier is not None:
        await rt.verifier.verify(request.headers.get("authorization"),
                                 rt.settings.public_url + route_path(request.scope))


def _service(request: Request, rt: Runtime) -> ServiceSpec:
    service = services_of(rt.rules.current if rt.rules.loaded else None).get(request.path_params["service_id"])
    if service is None:
        raise ServiceError(404, Problem("no such CDS service here; GET /cds-services lists the services",
                                        code="not-found"))
    request.scope[metrics.SERVICE_KEY] = (service.id, service.hook)
    return service


async def discovery(request: Request, rt: Runtime) -> Response:
    if not rt.settings.public_discovery:
        await authenticate(request, rt)
    return json_response(discovery_document(rt.rules.current if rt.rules.loaded else None))


async def invoke(request: Request, rt: Runtime) -> Response:
    service = _service(request, rt)
    await authenticate(request, rt)
    data = parse_json(await read_body(request, rt.settings))
    body, info = await rt.hooks.handle(service, data)
    request.scope.setdefault("ccsvi.log", {}).update(info)
    return Response(body, media_type=JSON)


async def feedback(request: Request, rt: Runtime) -> Response:
    service_id = _service(request, rt).id
    await authenticate(request, rt)
    data = parse_json(await read_body(request, rt.settings))
    items = validate(FeedbackRequest, data).feedback
    await asyncio.to_thread(rt.store.flush)  # decisions still queued in this worker are visible for linking
    result = await asyncio.to_thread(rt.store.record_feedback, service_id, items)
    summary = result.to_json()
    request.scope.setdefault("ccsvi.log", {}).update(summary)
    return json_response(summary)


async def health(request: Request, rt: Runtime) -> Response:
    ok = rt.rules.loaded
    status = ("degraded" if rt.rules.cards_failing else "ok") if ok else "starting"  # degraded: still 200
    return json_response({"status": status,
                          "rulePack": rt.rules.current.identity if ok else None,
                          "auth": "jwt" if rt.verifier is not None else "off",
                          "rulePackReload": _reload_status(request),
                          "cardRenderErrors": rt.rules.card_error_status(),
                          "pid": os.getpid()}, 200 if ok else 503)


async def metrics_page(request: Request, rt: Runtime) -> Response:
    """Prometheus text format; like /health, no token (it holds counts and the pack identity, no PHI)."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


async def patient_info(request: Request, rt: Runtime) -> Response:
    """The patient-facing page a card links to, from the running pack. Public: a patient's browser opens it."""
    from ccsvi_cds.patient_info import page_path, render_page

    path = page_path(rt.rules.current.pack.root, request.path_params["page"]) if rt.rules.loaded else None
    if path is None:
        raise ServiceError(404, Problem("no such patient information page", code="not-found"))
    return Response(render_page(path.read_text(encoding="utf-8")), media_type="text/html; charset=utf-8")


def _reload_status(request: Request) -> dict[str, Any] | None:
    """Hot reload: off (None), or watching with the latest outcome (e.g. a refused edit and its errors)."""
    reloader = getattr(request.app.state, "reloader", None)
    if reloader is None:
        return None
    return {"watching": True, "last": reloader.last.to_json() if reloader.last else None}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
    return outcome_response(exc.status_code, [Problem(f"{exc.detail} ({request.method})", code=code)],
                            headers=exc.headers)


HOOK_PATH = re.compile(r"/cds-services/([^/]+)")  # the hook route's own pattern (Starlette: [^/]+ up to the end)


class Front:
    """The service's outer layer, one pure-ASGI class: each layer of middleware costs a coroutine and a send
    wrapper per message on every request, and a hook call is most of what the service answers. In order:

    - access log: one JSON log line per request (method, path, status, duration and ids/counts set by the
      endpoint) and its metrics; shed and unrouted requests are counted too;
    - load shedding: 503 + Retry-After for a request that arrives while `limit` requests of this worker are in
      progress or queued (uvicorn's task count at arrival, see http_guard, or those in this app): answering
      late is worse than asking the EHR to retry. /health and /metrics are never shed; a shed answer gets no
      CORS headers;
    - CORS: Starlette's middleware for a request with Origin. Without Origin (an EHR's back end calling, i.e.
      nearly every hook call) the only thing CORS does to a response is to add `Vary: Origin`, appended here
      without parsing either side's headers (merged by Starlette's code if the response has a Vary);
    - a hook call without Origin (POST /cds-services/{service_id}) goes to its endpoint directly: Starlette's
      exception middleware and router have nothing to do for it, as the endpoint answers every error itself.
    """

    def __init__(self, app: ASGIApp, limit: int, hook: Callable[[Request], Awaitable[Response]],
                 cors: dict[str, Any]) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.hook = hook
        self.cors = CORSMiddleware(app, **cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        vary = not any(name == b"origin" for name, _ in scope["headers"])  # add `Vary: Origin`; not when shed

        async def sender(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if vary:
                    headers = message.get("headers") or []
                    if any(name.lower() == b"vary" for name, _ in headers):  # merged by the general path
                        await self.cors.send(message, send, Headers(scope=scope))
                        return
                    message["headers"] = [*headers, (b"vary", b"Origin")]
            await send(message)

        try:
            path = route_path(scope)
            if path in ("/health", "/metrics"):
                await self._route(scope, receive, sender, path, not vary)
                return
            if max(scope.get(BACKLOG_KEY, 0), self.in_flight) >= self.limit:
                vary = False
                scope.setdefault("ccsvi.log", {})["problem"] = "overloaded: request shed"
                response = outcome_response(503, [Problem(
                    f"the service is at its limit of {self.limit} requests in progress; retry shortly",
                    code="throttled")], headers={"Retry-After": "1"})
                await response(scope, receive, sender)
                return
            self.in_flight += 1
            try:
                await self._route(scope, receive, sender, path, not vary)
            finally:
                self.in_flight -= 1
        finally:
            path = scope["path"] if status != 404 else "(no such route)"  # a client's made-up path may hold anything
            seconds = time.perf_counter() - start
            metrics.request_done(scope, status, seconds)
            logs.record("request", {"method": scope["method"], "path": path, "status": status,
                                    "ms": round(seconds * 1000, 2), **scope.get("ccsvi.log", {})})

    async def _route(self, scope: Scope, receive: Receive, send: Send, path: str, origin: bool) -> None:
        if origin:
            await self.cors(scope, receive, send)
            return
        if scope["method"] == "POST" and (match := HOOK_PATH.fullmatch(path)) is not None:
            scope["endpoint"], scope["path_params"] = self.hook, {"service_id": match[1]}
            response = await self.hook(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rules = RuleState(base_url=settings.public_url, validate=settings.fhir_validation)
        rules.load(settings.rules_dir)  # here, in the worker process: durable_rules handles cannot cross a fork
        client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                   timeout=httpx.Timeout(settings.fhir_timeout_s),
                                   limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
        store = Store(settings.db_path)
        replay = ReplayCache(replay_path(settings.db_path)) if settings.auth_enabled else None
        verifier = JwtVerifier(settings, client, replay) if replay is not None else None
        hooks = HookHandler(settings, rules, store, PrefetchCompleter(settings, client))
        app.state.runtime = Runtime(settings, rules, store, client, verifier, hooks)
        watcher = None
        if settings.reload_rules:  # hot reload (authoring/reload.py): only a linted, valid pack is swapped in
            from ccsvi_cds.authoring.reload import start_watcher

            def reloaded(status: str) -> None:
                metrics.reload_outcome(status)
                metrics.pack_serving(rules.current.identity)

            watcher = start_watcher(settings.rules_dir, rules, on_outcome=reloaded)
        app.state.reloader = watcher[0] if watcher else None
        pack = rules.current.identity
        metrics.worker_started()
        metrics.pack_serving(pack)
        log.info("worker ready", extra={"pid": os.getpid(), "pack": pack["name"], "version": pack["version"],
                                        "auth": "jwt" if verifier else "off"})
        try:
            yield
        finally:
            if watcher is not None:
                watcher[2].set()
                watcher[1].cancel()
                await asyncio.gather(watcher[1], return_exceptions=True)
            await client.aclose()
            store.close()
            if replay is not None:
                replay.close()
            metrics.worker_stopped()
            log.info("worker stopped", extra={"pid": os.getpid()})
            logs.flush()

    hook = guarded(invoke, "hook")
    routes = [
        Route("/cds-services", guarded(discovery, "discovery"), methods=["GET"]),
        Route("/cds-services/{service_id}", hook, methods=["POST"]),
        Route("/cds-services/{service_id}/feedback", guarded(feedback, "feedback"), methods=["POST"]),
        Route("/health", guarded(health, "health"), methods=["GET"]),
        Route("/metrics", guarded(metrics_page, "metrics"), methods=["GET"]),
        Route("/patient-info/{page}", guarded(patient_info, "patient-info"), methods=["GET"]),
    ]
    middleware = [
        Middleware(Front, limit=settings.max_in_flight, hook=hook,
                   cors={"allow_origins": settings.cors_origins, "allow_methods": ["GET", "POST", "OPTIONS"],
                         "allow_headers": settings.cors_headers, "max_age": 600}),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False  # its redirect's Location comes from the Host header: 404 instead
    return app


@asynccontextmanager
async def service_lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start-up and shutdown of a `create_app` app mounted in a host application, which Starlette does not
    run for a mounted app: `Starlette(routes=[Mount("/cds", cds)], lifespan=lambda _: service_lifespan(cds))`."""
    async with app.router.lifespan_context(app):
        yield


def create_app_from_env() -> Starlette:
    """Factory for uvicorn worker processes: settings come from the environment / config file."""
    settings = ServiceSettings()
    logs.setup(settings.log_level)
    return create_app(settings)
