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
from google.protobuf import duration_pb2, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediajobs.client import MediaJobsClient, Worker
from mediajobs.client.cli import main as cli_main
from mediajobs.server.store import api_keys
from mediajobs.v1 import admin_service_pb2
from mediajobs.v1 import bulk_upload_service_pb2
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import job_service_pb2
from mediajobs.v1 import live_job_service_pb2
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import media_service_pb2
from mediajobs.v1 import worker_service_pb2
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


# Who may call what: one entry per RPC of every service, as the README's
# matrix says (a = admin, e = editor, w = worker, v = viewer). A new RPC
# without an entry fails test_every_rpc_checks_the_key_and_the_role.
MATRIX = {
    "JobService": {
        "CreateJob": "ae", "BatchCreateJobs": "ae", "GetJob": "aevw", "ListJobs": "aev", "UpdateJob": "ae",
        "AbortJob": "ae", "RerunJob": "ae", "DeleteJobs": "ae", "ListJobTypes": "aev", "ListJobProblems": "aev",
        "WatchJobs": "aev",
    },
    "WorkerService": {
        "AcquireJobs": "aw", "Heartbeat": "aw", "CompleteJob": "aw", "CompleteJobs": "aw", "FailJob": "aw",
        "ReleaseJob": "aw", "CleanExpiredLeases": "aw", "CheckFileExists": "aw", "AuthorizePublish": "aw",
        "ReportLiveStatus": "aw",
    },
    "MediaService": {
        "CreateEntry": "ae", "GetEntry": "aev", "ListEntries": "aev", "DeleteEntry": "ae",
        "CheckEntryIsDone": "aew", "AddMediaInfo": "aew", "GetMediaInfo": "aev", "ListMediaInfos": "aev",
        "CreateJobTemplate": "ae", "GetJobTemplate": "aev", "ListJobTemplates": "aev", "UpdateJobTemplate": "ae",
        "DeleteJobTemplate": "ae", "ImportCuePoints": "ae", "ExportCuePoints": "aev",
    },
    "BulkUploadService": {
        "StartBulkUpload": "ae", "WriteBulkUploadFile": "ae", "QueryBulkUploadWriteStatus": "aev",
        "GetBulkUpload": "aev", "ListBulkUploads": "aev", "WatchBulkUpload": "aev", "AbortBulkUpload": "ae",
        "RerunBulkUpload": "ae", "ReadBulkUploadFile": "aev", "ReadBulkUploadLog": "aev",
        "ListBulkUploadResults": "aev", "CountBulkUploadResults": "aev", "GetBulkUploadLastResult": "aev",
        "AddBulkUploadResults": "aew", "UpdateBulkUploadResults": "aew",
    },
    "LiveJobService": {
        "ListLiveJobs": "aev", "CreateLiveJob": "ae", "GetLiveJob": "aev", "ListLiveOutputs": "aev",
        "SetLiveEncoding": "ae", "ListLiveTimings": "aev", "GetLiveStatistics": "aev", "ResetStreamKey": "ae",
        "DeleteLiveJob": "ae", "CreateLiveClip": "ae", "GetLiveClip": "aev", "ListLiveClips": "aev",
    },
    "AdminService": {
        "CreateProject": "a", "GetProject": "a", "ListProjects": "a", "DeleteProject": "a", "CreateApiKey": "a",
        "ListApiKeys": "a", "RevokeApiKey": "a", "ListAuditEntries": "a", "GetCaller": "aevw",
    },
}
ROLE_LETTER = {"admin": "a", "editor": "e", "worker": "w", "viewer": "v"}
SERVICE_MODULES = (job_service_pb2, worker_service_pb2, media_service_pb2, bulk_upload_service_pb2,
                   live_job_service_pb2, admin_service_pb2)
# Requests that end at once for a caller who may make them: the rest go
# empty (and fail validation, which comes after the key and role check).
REQUESTS: dict[str, Any] = {"WatchJobs": svc.WatchJobsRequest(send_initial_snapshot=True)}
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# What an admin key of another project may not do here: manage projects.
HOME_ADMIN_ONLY = {"CreateProject", "DeleteProject"}


def all_methods() -> list[Any]:
    return [m for mod in SERVICE_MODULES for s in mod.DESCRIPTOR.services_by_name.values() for m in s.methods]


async def call_status(ch: grpc.aio.Channel, m: Any, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """Call method `m` (a descriptor) with an empty request; (code, details).
    A stream that yields a first message counts as OK."""
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    path = f"/{m.containing_service.full_name}/{m.name}"
    req = REQUESTS.get(m.name) or req_cls()
    kw = dict(request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString)
    try:
        if m.client_streaming:
            await ch.stream_unary(path, **kw)(iter([req]), metadata=metadata, timeout=30)
        elif m.server_streaming:
            call = ch.unary_stream(path, **kw)(req, metadata=metadata, timeout=30)
            async for _ in call:
                call.cancel()
                break
        else:
            await ch.unary_unary(path, **kw)(req, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


async def test_every_rpc_checks_the_key_and_the_role(tmp_path: Path) -> None:
    """Every RPC of every service, with no key, a bad key, a revoked key,
    each role, and a key of another project."""
    assert {f"{m.containing_service.name}/{m.name}" for m in all_methods()} == {
        f"{s}/{n}" for s, methods in MATRIX.items() for n in methods}, "MATRIX must list every RPC"
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys")
    keys = {role: await make_key(app, role) for role in api_keys.ROLES}
    other = await make_key(app, "admin", project="acme")
    revoked = await make_key(app, "admin")
    assert await app.store.write(lambda tx: api_keys.revoke(tx.db, revoked.split("_")[1], tx.now))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            for m in all_methods():
                name = f"{m.containing_service.name}/{m.name}"
                allowed = MATRIX[m.containing_service.name][m.name]
                for label, md in (("no key", []), ("bad key", bearer("mjk_nope_nope")),
                                  ("revoked key", bearer(revoked)), ("not Bearer", [("authorization", keys["admin"])])):
                    code, details = await call_status(ch, m, md)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (name, label, code, details)
                for role, key in keys.items():
                    code, details = await call_status(ch, m, bearer(key))
                    if ROLE_LETTER[role] in allowed:
                        assert code not in REFUSED, (name, role, code, details)
                    else:
                        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, role, code, details)
                        needed = " or ".join(r for r in api_keys.ROLES if ROLE_LETTER[r] in allowed)
                        assert f"needs the role {needed}" in details, (name, role, details)
                # An admin of another project reaches every RPC (and only its
                # own project's things: tests/test_projects.py), except
                # managing projects, which needs an admin of the home project.
                code, details = await call_status(ch, m, bearer(other))
                if m.name in HOME_ADMIN_ONLY:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
                else:
                    assert code not in REFUSED, (name, "admin of acme", code, details)
            # Health is always open.
            ok = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
            # The refusal says how to send a key.
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in job_service_pb2_grpc.JobServiceStub(ch).WatchJobs(svc.WatchJobsRequest()):
                    break
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in (e.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(svc.CreateJobRequest(type="TRANSCODE"),
                                                                        metadata=bearer(keys["viewer"]))
            assert error_info(e.value).reason == "ROLE_NOT_ALLOWED"
            # What a key makes records the key as its creator, whatever the request says.
            made = await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(
                svc.CreateJobRequest(type="TRANSCODE", creator="mallory"), metadata=bearer(keys["editor"]))
            assert made.creator == f"key:{keys['editor'].split('_')[1].upper()}"
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
    # The spelling (`keys create --db DB ...`) and the global one alike.
    made = run_server(tmp_path, "keys", "create", "--db", db, "--project", "default", "--role", "admin",
                      "--name", "ops")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mjk_") and key not in made.stderr and "shown once" in made.stderr
    listed = run_server(tmp_path, "keys", "--db", db, "list")
    assert listed.stdout == run_server(tmp_path, "keys", "list", "--db", db).stdout
    key_id = key.split("_")[1].upper()
    assert key_id in listed.stdout and "admin" in listed.stdout and key.split("_", 2)[2] not in listed.stdout
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
