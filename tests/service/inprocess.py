"""The service app in the test's own process (Starlette TestClient, lifespan included): for request/response
logic, which needs no sockets. What needs processes and sockets (workers, signals, reload, logs, keep-alive,
JWT replay across workers) runs against the real server in service_harness.py."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import httpx

with warnings.catch_warnings():  # Starlette >= 0.50 nudges towards httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from ccsvi_cds.service.app import create_app
from ccsvi_cds.service.settings import ServiceSettings


def settings_from(env: dict[str, str]) -> ServiceSettings:
    """Settings exactly as a worker would read them from these CCSVI_* variables (and nothing else)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CCSVI_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        return ServiceSettings()
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


class InProcessService:
    """Same interface as service_harness.Service for what request/response tests use (post, client)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._client = TestClient(create_app(settings_from(env)), base_url="http://127.0.0.1:8080",
                                  raise_server_exceptions=False)
        self.client: httpx.Client = self._client.__enter__()

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.client.post(path, content=content, headers=headers, **kw)

    def stop(self) -> None:
        self._client.__exit__(None, None, None)
