"""API keys and roles (--auth keys) over real channels: every service's
unary and streaming calls need a key, each role reaches what the README's
matrix says and is refused the rest with the roles it needs, health and
reflection stay open, the CLI and the worker SDK send keys, the bootstrap
command makes the first admin key, and a server reachable from other
machines refuses to start without TLS and keys unless --insecure."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediajobs.client import MediaJobsClient, Worker
from mediajobs.client.cli import main as cli_main
from mediajobs.server.store import api_keys
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, start_app


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def make_key(app: Any, role: str, project: str = "default") -> str:
    _k, text = await app.store.write(lambda tx: api_keys.create_key(tx.db, project, role, f"{role} key", "test",
                                                                    tx.now))
    return text


async def test_every_call_needs_a_key_and_a_role_that_allows_it(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys")
    keys = {role: await make_key(app, role) for role in api_keys.ROLES}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)

            async def code(call: Any) -> grpc.StatusCode:
                try:
                    await call
                except grpc.aio.AioRpcError as e:
                    return e.code()
                return grpc.StatusCode.OK

            # No key, a bad key: UNAUTHENTICATED, on unary and streaming calls alike.
            assert await code(jobs.ListJobs(svc.ListJobsRequest())) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in jobs.WatchJobs(svc.WatchJobsRequest(start_revision=0)):
                    break
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in (e.value.details() or "")

            async def empty_upload() -> Any:
                return await bulk.WriteBulkUploadFile(iter([bsvc.WriteBulkUploadFileRequest()]),
                                                      metadata=bearer("mjk_nope"))
            assert await code(empty_upload()) == grpc.StatusCode.UNAUTHENTICATED
            assert await code(live.ListLiveJobs(lsvc.ListLiveJobsRequest(), metadata=bearer(keys["viewer"] + "x"))
                              ) == grpc.StatusCode.UNAUTHENTICATED
            # Health is always open.
            ok = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
            # The matrix.
            create = lambda k: jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=bearer(k))  # noqa: E731
            acquire = lambda k: workers.AcquireJobs(wsvc.AcquireJobsRequest(  # noqa: E731
                job_types=["TRANSCODE"], no_wait=True, lease_duration=duration_pb2.Duration(seconds=30)),
                metadata=bearer(k))
            read = lambda k: jobs.ListJobs(svc.ListJobsRequest(), metadata=bearer(k))  # noqa: E731
            expect = {"admin": (grpc.StatusCode.OK,) * 3,
                      "editor": (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK),
                      "worker": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK, grpc.StatusCode.OK),
                      "viewer": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED,
                                 grpc.StatusCode.OK)}
            for role, (c, a, r) in expect.items():
                assert (await code(create(keys[role])), await code(acquire(keys[role])),
                        await code(read(keys[role]))) == (c, a, r), role
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await create(keys["viewer"])
            info = error_info(e.value)
            assert info.reason == "ROLE_NOT_ALLOWED" and "admin or editor" in (e.value.details() or "")
            # What a key makes records the key as its creator, whatever the request says.
            made = await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", creator="mallory"),
                                        metadata=bearer(keys["editor"]))
            assert made.creator == f"key:{keys['editor'].split('_')[1].upper()}"
            # A key of a project this server does not serve, and a revoked key.
            other = await make_key(app, "admin", project="elsewhere")
            assert await code(read(other)) == grpc.StatusCode.PERMISSION_DENIED
            fresh = await make_key(app, "admin")
            key_id = fresh.split("_")[1]
            assert await app.store.write(lambda tx: api_keys.revoke(tx.db, key_id, tx.now))
            assert await code(read(fresh)) == grpc.StatusCode.UNAUTHENTICATED
            used = await app.store.read(lambda db, p: api_keys.list_keys(db, "default"))
            assert any(k.last_used_time for k in used if k.role == "admin")  # last-used is kept
    finally:
        await app.stop(None)


async def test_the_cli_and_the_worker_sdk_send_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys")
    editor, worker_key = await make_key(app, "editor"), await make_key(app, "worker")
    target = f"127.0.0.1:{app.port}"
    try:
        assert await asyncio.to_thread(cli_main, ["--server", target, "jobs", "list"]) == 1  # no key
        monkeypatch.setenv("MEDIAJOBS_API_KEY", editor)
        assert await asyncio.to_thread(cli_main, ["--server", target, "jobs", "create", "--type", "CHECKSUM",
                                                  "-q"]) == 0
        monkeypatch.delenv("MEDIAJOBS_API_KEY")

        def created() -> str:
            c = MediaJobsClient(target, api_key=editor)
            try:
                return c.create_job("CHECKSUM").id
            finally:
                c.close()

        job_id = await asyncio.to_thread(created)
        w = Worker(target, api_key=worker_key, concurrency=1)
        done = asyncio.Event()

        @w.handler("CHECKSUM")
        async def checksum(ctx: Any) -> dict[str, str]:
            if ctx.job_id == job_id:
                done.set()
            return {"ok": "yes"}

        run = asyncio.create_task(w.run(handle_signals=False))
        await asyncio.wait_for(done.wait(), 20)
        w.stop(5)
        await asyncio.wait_for(run, 20)
        assert w.stats["completed"] >= 1
    finally:
        await app.stop(None)


def run_server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAJOBS_")}
    return subprocess.run([sys.executable, "-m", "mediajobs.server", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_a_reachable_address_needs_tls_and_keys_or_insecure(tmp_path: Path) -> None:
    for args, names in ((["--listen", "0.0.0.0:0"], "TLS (--tls-cert/--tls-key)"),
                        (["--listen", "0.0.0.0:0", "--auth", "none", "--tls-cert", "a", "--tls-key", "b"],
                         "API keys (--auth keys)"),
                        (["--listen", "127.0.0.1:0", "--auth", "maybe"], "--auth")):
        r = run_server(tmp_path, "--data-dir", str(tmp_path / "data"), *args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and names in lines[0], r.stderr


def test_the_bootstrap_makes_lists_and_revokes_keys(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    made = run_server(tmp_path, "keys", "--db", db, "create", "--role", "admin", "--name", "ops")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mjk_") and key not in made.stderr and "shown once" in made.stderr
    listed = run_server(tmp_path, "keys", "--db", db, "list")
    key_id = key.split("_")[1].upper()
    assert key_id in listed.stdout and "admin" in listed.stdout and key.split("_")[2] not in listed.stdout
    assert run_server(tmp_path, "keys", "--db", db, "revoke", key_id).returncode == 0
    again = run_server(tmp_path, "keys", "--db", db, "revoke", key_id)
    assert again.returncode == 1 and "no live key" in again.stderr
    bad = run_server(tmp_path, "keys", "--db", db, "create", "--role", "root")
    assert bad.returncode == 2
    audit = run_server(tmp_path, "keys", "--db", db, "audit")
    actions = [ln.split()[2] for ln in audit.stdout.splitlines()]
    assert audit.returncode == 0 and actions == ["KEY_CREATED", "KEY_REVOKED"] and key_id in audit.stdout


async def test_reflection_is_open_unless_reflection_auth(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def services(port: int, key: str | None) -> Any:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             metadata=bearer(key) if key else None)
            try:
                async for resp in call:
                    return {s.name for s in resp.list_services_response.service}
            except grpc.aio.AioRpcError as e:
                return e.code()
        return None

    for flag in (False, True):
        app = await start_app(str(tmp_path / f"db{flag}.sqlite"), auth="keys", reflection_auth=flag)
        try:
            viewer = await make_key(app, "viewer")
            open_answer = await services(app.port, None)
            if flag:
                assert open_answer == grpc.StatusCode.UNAUTHENTICATED
            else:
                assert "mediajobs.v1.JobService" in open_answer
            assert "mediajobs.v1.LiveJobService" in await services(app.port, viewer)
        finally:
            await app.stop(None)
