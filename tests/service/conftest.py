"""Fixtures for the service tests; the harness they build on is in service_harness.py (importable by name,
unlike a conftest, which shares its module name with every other conftest of the suite)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, str(Path(__file__).parent))

from service_harness import FakeFhir, Service

from ccsvi_cds.service.replay import replay_path


@pytest.fixture(scope="module")
def service_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Service] = []

    def make(env: dict[str, str] | None = None, args: list[str] | None = None, start: bool = True) -> Service:
        tmp = tmp_path_factory.mktemp("svc")
        full_env = {"CCSVI_DB_PATH": str(tmp / "service.sqlite3"), "CCSVI_LOG_LEVEL": "info", **(env or {})}
        svc = Service(full_env, args or [], tmp / "service.log")
        started.append(svc)
        if start:
            svc.start()
        return svc

    yield make
    for svc in started:
        svc.stop()
        svc.client.close()
        jti = replay_path(Path(svc.env["CCSVI_DB_PATH"]))
        for leftover in jti.parent.glob(jti.name + "*"):
            leftover.unlink()


@pytest.fixture(scope="module")
def fhir() -> Iterator[FakeFhir]:
    server = FakeFhir()
    yield server
    server.close()


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def app_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """In-process services (see inprocess.py), stopped (lifespan shutdown) after the module."""
    from inprocess import InProcessService

    started: list[InProcessService] = []

    def make(env: dict[str, str] | None = None) -> InProcessService:
        tmp = tmp_path_factory.mktemp("app")
        svc = InProcessService({"CCSVI_DB_PATH": str(tmp / "service.sqlite3"), **(env or {})})
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
