"""Shared fixtures: a real grpc.aio server on a free localhost port, over a
temp-file SQLite (or the local PostgreSQL), and stubs on a real channel."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import grpc
import peewee
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mediajobs.server.app import App, build_server
from mediajobs.server.config import Config
from mediajobs.v1 import job_service_pb2_grpc

PG_URL = os.environ.get("MEDIAJOBS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class FakeClock:
    """An injectable clock (microseconds); tests move time, never sleep."""

    def __init__(self, start_us: int = 1_800_000_000_000_000) -> None:
        self.now = start_us

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


def pg_available() -> bool:
    try:
        db = peewee.PostgresqlDatabase(None)
        db.init(PG_URL.rsplit("/", 1)[1], host="127.0.0.1", port=5432, user="postgres", connect_timeout=3)
        db.connect()
        db.close()
        return True
    except Exception:
        return False


def fresh_pg_url() -> str:
    """A PostgreSQL URL whose mediajobs tables are empty: a new schema per call."""
    if not pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable, and CI requires the PostgreSQL tests to run")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable")
    schema = "mj_" + uuid.uuid4().hex[:12]
    db = peewee.PostgresqlDatabase(PG_URL.rsplit("/", 1)[1], host="127.0.0.1", port=5432, user="postgres")
    db.connect()
    db.execute_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    db.execute_sql(f"CREATE SCHEMA {schema}")
    db.close()
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "mediajobs.db")
    return fresh_pg_url()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "mediajobs.db")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def start_app(db: str, clock: FakeClock | None = None, **cfg_kw: object) -> App:
    cfg = Config(listen="127.0.0.1:0", db=db, **cfg_kw)  # type: ignore[arg-type]
    app = await build_server(cfg, clock=clock) if clock else await build_server(cfg)
    await app.start()
    return app


@contextlib.asynccontextmanager
async def gateway_app(db: str, **cfg_kw: object) -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    """A server with its HTTP gateway (--http-listen on a free port; cfg_kw
    as Config's, e.g. http_gateway="inline"): the app, the gateway's base URL
    and an HTTP session, all closed after."""
    app = await start_app(db, None, http_listen="127.0.0.1:0", **cfg_kw)
    try:
        async with aiohttp.ClientSession() as s:
            yield app, f"http://127.0.0.1:{app.gateway.port}", s
    finally:
        await app.stop(None)


@pytest.fixture
async def app(sqlite_path: str) -> AsyncIterator[App]:
    a = await start_app(sqlite_path)
    try:
        yield a
    finally:
        await a.stop(None)


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


def status_detail(err: grpc.aio.AioRpcError | grpc.RpcError, cls: Any) -> Any:
    """The detail of type `cls` in a failed call's rich status (fails the
    test if there is none)."""
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert st is not None, f"no rich status on {err}"
    for d in st.details:
        if d.Is(cls.DESCRIPTOR):
            info = cls()
            d.Unpack(info)
            return info
    raise AssertionError(f"no {cls.DESCRIPTOR.name} in {st}")


def error_info(err: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test if there is none)."""
    return status_detail(err, error_details_pb2.ErrorInfo)  # type: ignore[no-any-return]


def field_violations(err: grpc.aio.AioRpcError | grpc.RpcError) -> dict[str, str]:
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out.update({v.field: v.description for v in br.field_violations})
    return out
