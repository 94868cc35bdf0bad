"""The floor of the service benchmark: a bare uvicorn + Starlette endpoint doing the HTTP part of a hook call
and nothing else. It reads the request body, parses it with orjson and answers the response given in the
file named by BENCH_FLOOR_RESPONSE (the service's own answer to the same request), encoded per request."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = orjson.loads(Path(os.environ["BENCH_FLOOR_RESPONSE"]).read_bytes())


async def hook(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(orjson.dumps(ANSWER), media_type="application/json")


app = Starlette(routes=[Route("/cds-services/{service_id}", hook, methods=["POST"])])
