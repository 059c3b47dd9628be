"""The HTTP gateway's own REST API over a real server and real HTTP: the
protos' JSON mapping both ways, path/query/body/Idempotency-Key into one
request, errors as JSON carrying google.rpc.Status with Google's HTTP
codes, API keys passed through (so roles and projects hold over HTTP), the
gateway as a process of its own, and the refusal of a reachable address."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from mediajobs.server.app import App
from mediajobs.server.gateway import rest
from mediajobs.server.gateway.upstream import SERVICES

from conftest import gateway_app, start_app
from test_auth import make_key


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    async with gateway_app(str(tmp_path / "db.sqlite")) as g:
        yield g


def test_every_route_names_an_rpc_and_a_request_field() -> None:
    from mediajobs.server.gateway.routes import _field, method_descriptor

    seen = set()
    for r in rest.ROUTES:
        m = method_descriptor(r)
        assert not m.client_streaming and not m.server_streaming, r
        for name in r.path_fields:
            _field(m.input_type, name)
        if r.body not in (None, "*"):
            assert r.body in m.input_type.fields_by_name, r
        assert (r.method, r.path) not in seen, r
        seen.add((r.method, r.path))
    # Every unary RPC of the resource services is reachable over HTTP.
    unary = {f"{s.name}/{m.name}" for s in SERVICES.values() if s.name != "WorkerService"
             for m in s.methods if not m.client_streaming and not m.server_streaming}
    assert unary == {f"{r.service}/{r.rpc}" for r in rest.ROUTES}


async def test_jobs_over_http(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    r = await s.post(f"{base}/v1/jobs", json={"type": "TRANSCODE", "params": {"source": "a.mp4"},
                                               "metadata": {"team": "news"}, "priority": "HIGH"},
                     headers={"Idempotency-Key": "create-1"})
    assert r.status == 200 and r.content_type == "application/json"
    job = await r.json()
    assert job["state"] == "PENDING" and job["priority"] == "HIGH" and job["params"] == {"source": "a.mp4"}
    # The same Idempotency-Key replays the first reply.
    again = await (await s.post(f"{base}/v1/jobs", json={"type": "TRANSCODE", "params": {"source": "a.mp4"},
                                                          "metadata": {"team": "news"}, "priority": "HIGH"},
                                headers={"Idempotency-Key": "create-1"})).json()
    assert again["id"] == job["id"]
    got = await (await s.get(f"{base}/v1/jobs/{job['id']}", params={"includeMetadata": "true"})).json()
    assert got["id"] == job["id"] and got["metadata"] == {"team": "news"}
    # Query parameters: repeated (repeat or comma list), enums by name, maps as key:value, snake or camel.
    for q in ([("states", "PENDING"), ("states", "RUNNING")], [("states", "PENDING,RUNNING")],
              [("metadata", "team:news")], [("page_size", "1")], [("types", "TRANSCODE")]):
        listed = await (await s.get(f"{base}/v1/jobs", params=q)).json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]], q
    # A page token round-trips.
    await s.post(f"{base}/v1/jobs", json={"type": "PROBE"})
    first = await (await s.get(f"{base}/v1/jobs", params={"pageSize": "1"})).json()
    second = await (await s.get(f"{base}/v1/jobs", params={"pageSize": "1", "pageToken": first["nextPageToken"]})
                    ).json()
    assert len(first["jobs"]) == len(second["jobs"]) == 1 and first["jobs"][0]["id"] != second["jobs"][0]["id"]
    # PATCH with an update mask; a custom method; the job's problems; the types.
    patched = await (await s.patch(f"{base}/v1/jobs/{job['id']}", params={"updateMask": "priority"},
                                   json={"priority": "LOW"})).json()
    assert patched["priority"] == "LOW"
    aborted = await (await s.post(f"{base}/v1/jobs/{job['id']}:abort", json={"reason": "test"})).json()
    assert aborted["state"] == "ABORTED"
    assert (await (await s.get(f"{base}/v1/jobs/{job['id']}/problems")).json()) == {}
    assert await (await s.get(f"{base}/v1/caller")).json() == {"project": "default", "home": True}
    types = await (await s.get(f"{base}/v1/jobTypes")).json()
    assert {t["name"] for t in types["jobTypes"]} >= {"TRANSCODE", "PROBE"}
    r = await s.delete(f"{base}/v1/jobs/{job['id']}")
    assert r.status == 200 and (await r.json())["deletedIds"] == [job["id"]]
    r = await s.get(f"{base}/v1/jobs/{job['id']}")
    body = await r.json()
    assert r.status == 404 and body["error"]["status"] == "NOT_FOUND"
    assert any(d.get("reason") == "JOB_NOT_FOUND" for d in body["error"]["details"])


async def test_client_mistakes_are_json_errors_never_500(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw

    async def err(r: Any) -> tuple[int, str, str]:
        body = await r.json()
        return r.status, body["error"]["status"], body["error"]["message"]

    assert (await err(await s.get(f"{base}/v1/jobs/not-an-id")))[:2] == (400, "INVALID_ARGUMENT")
    assert (await err(await s.post(f"{base}/v1/jobs", data=b"{nope",
                                   headers={"Content-Type": "application/json"})))[:2] == (400, "INVALID_ARGUMENT")
    assert (await err(await s.post(f"{base}/v1/jobs", json=[1, 2])))[:2] == (400, "INVALID_ARGUMENT")
    code, _, msg = await err(await s.post(f"{base}/v1/jobs", json={"type": "T", "nosuchfield": 1}))
    assert code == 400 and "nosuchfield" in msg
    code, _, msg = await err(await s.get(f"{base}/v1/jobs", params={"pageSize": "many"}))
    assert code == 400 and "pageSize" in msg
    code, _, msg = await err(await s.get(f"{base}/v1/jobs", params={"bogus": "1"}))
    assert code == 400 and "bogus" in msg
    code, status, _ = await err(await s.get(f"{base}/v1/nowhere"))
    assert (code, status) == (404, "NOT_FOUND")
    r = await s.put(f"{base}/v1/jobs")
    assert r.status == 405 and "GET" in r.headers["Allow"] and (await r.json())["error"]["code"] == 405
    code, _, msg = await err(await s.get(f"{base}/v1/jobTypes", headers={"Idempotency-Key": "x"}))
    assert code == 400 and "Idempotency-Key" in msg
    big = b'{"type": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    r = await s.post(f"{base}/v1/jobs", data=big, headers={"Content-Type": "application/json"})
    assert r.status == 413 and "limit" in (await r.json())["error"]["message"]


async def test_keys_pass_through_so_roles_and_projects_hold(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0")
    try:
        viewer, editor = await make_key(app, "viewer"), await make_key(app, "editor")
        other = await make_key(app, "editor", project="acme")
        base = f"http://127.0.0.1:{app.gateway.port}"
        async with aiohttp.ClientSession() as s:
            r = await s.get(f"{base}/v1/jobs")
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            r = await s.get(f"{base}/v1/jobs", headers={"Authorization": "Bearer mjk_\u00e9t\u00e9".encode().decode(
                "latin-1")})
            assert r.status == 401  # a key gRPC metadata cannot carry: refused, not a 500
            assert (await r.json())["error"]["status"] == "UNAUTHENTICATED"
            r = await s.post(f"{base}/v1/jobs", json={"type": "T"}, headers={"Authorization": f"Bearer {viewer}"})
            assert r.status == 403 and "editor" in (await r.json())["error"]["message"]
            job = await (await s.post(f"{base}/v1/jobs", json={"type": "T"},
                                      headers={"Authorization": f"Bearer {editor}"})).json()
            assert job["project"] == "default" and job["creator"].startswith("key:")
            r = await s.get(f"{base}/v1/jobs/{job['id']}", headers={"Authorization": f"bearer {other}"})
            assert r.status == 404
            who = await (await s.get(f"{base}/v1/caller", headers={"Authorization": f"Bearer {other}"})).json()
            assert (who["project"], who["role"], who.get("home", False)) == ("acme", "editor", False)
    finally:
        await app.stop(None)


async def test_quota_refusals_carry_retry_after(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), quota_pending_jobs=1, http_listen="127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{app.gateway.port}"
        async with aiohttp.ClientSession() as s:
            assert (await s.post(f"{base}/v1/jobs", json={"type": "T"})).status == 200
            r = await s.post(f"{base}/v1/jobs", json={"type": "T"})
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"]["status"] == "RESOURCE_EXHAUSTED"
    finally:
        await app.stop(None)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_a_reachable_gateway_address_needs_insecure() -> None:
    out = _run(["mediajobs.server.gateway", "--listen", "0.0.0.0:0"])
    assert out.returncode == 2 and "--insecure" in out.stderr and "TLS" in out.stderr
    out = _run(["mediajobs.server", "--http-listen", "0.0.0.0:0"])
    assert out.returncode == 2 and "--http-listen" in out.stderr and "--insecure" in out.stderr
    out = _run(["mediajobs.server", "--http-listen", "nonsense"])
    assert out.returncode == 2 and "HOST:PORT" in out.stderr


async def test_the_gateway_as_a_process_of_its_own(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, _base, s = gw
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.server.gateway", "--server", f"127.0.0.1:{app.port}", "--listen",
        "127.0.0.1:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("mediajobs-gateway listening on http://127.0.0.1:"), line
        url = line.split()[3]
        made = await (await s.post(f"{url}/v1/jobs", json={"type": "T"})).json()
        got = await (await s.get(f"{url}/v1/jobs/{made['id']}")).json()
        assert got["id"] == made["id"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_bulk_uploads_file_and_log_over_http(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    import hashlib

    _app, base, s = gw
    content = b"name,reference_id\n" + b"".join(b"Clip %d,ref-%d\n" % (i, i) for i in range(60_000)) + b",missing\n"
    up = await (await s.post(f"{base}/v1/bulkUploads", json={"bulkUpload": {"fileName": "big.csv"}})).json()
    assert up["state"] == "UPLOADING", up
    # Streamed in two writes (more than one 1 MiB chunk in all), the second finishing the file.
    half = len(content) // 2
    r = await s.put(f"{base}/v1/bulkUploads/{up['id']}/file", data=content[:half])
    assert r.status == 200 and int((await r.json())["committedSize"]) == half
    status = await (await s.get(f"{base}/v1/bulkUploads/{up['id']}:writeStatus")).json()
    assert int(status["committedSize"]) == half
    r = await s.put(f"{base}/v1/bulkUploads/{up['id']}/file", data=content[half:],
                    params={"writeOffset": str(half), "finishWrite": "true",
                            "sha256": hashlib.sha256(content).hexdigest()})
    done = await r.json()
    assert r.status == 200 and int(done["committedSize"]) == len(content), done
    # A write at the wrong offset is refused by the server, as JSON.
    r = await s.put(f"{base}/v1/bulkUploads/{up['id']}/file", data=b"x", params={"writeOffset": "3"})
    assert r.status in (400, 409) and "error" in await r.json()
    # The file comes back byte for byte.
    r = await s.get(f"{base}/v1/bulkUploads/{up['id']}/file")
    assert r.status == 200 and r.content_type == "text/csv" and await r.read() == content
    r = await s.get(f"{base}/v1/bulkUploads/{up['id']}/file", params={"readOffset": "5", "readLimit": "10"})
    assert await r.read() == content[5:15]
    # Once applied (followed on WatchBulkUpload), the log of its errors: the record without a name.
    import grpc

    from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
    from mediajobs.v1 import bulk_upload_service_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{_app.port}") as ch:
        async for u in bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch).WatchBulkUpload(
                bsvc.WatchBulkUploadRequest(id=up["id"]), timeout=120):
            if u.counts.applied == u.counts.total_records and u.counts.total_records:
                break
    r = await s.get(f"{base}/v1/bulkUploads/{up['id']}/log", params={"format": "JSONL", "statuses": "ERROR"})
    lines = (await r.text()).splitlines()
    assert r.content_type == "application/x-ndjson" and len(lines) == 1 and "missing" in lines[0]
    r = await s.get(f"{base}/v1/bulkUploads/01HA255YE6H6DEETJ5M6595ZDA/log")
    assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"



async def test_the_embedded_gateway_is_a_child_process_that_is_restarted_and_dies_with_the_server(
        tmp_path: Path) -> None:
    import select
    import signal

    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0")  # --http-gateway process
    try:
        gw = app.gateway
        base = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as s:
            made = await (await s.post(f"{base}/v1/jobs", json={"type": "T"})).json()
            assert gw.proc.pid != os.getpid()
            gw.proc.kill()  # the gateway dies: the server starts it again, on the same port
            await asyncio.wait_for(gw.wait_started(2), 60)
            got = await (await s.get(f"{base}/v1/jobs/{made['id']}")).json()
            assert got["id"] == made["id"]
    finally:
        await app.stop(None)
    assert gw.proc.returncode is not None  # stopped with the server

    # A server killed outright takes its gateway along (PR_SET_PDEATHSIG).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.server", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "killed"), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        banner = ""
        while "http gateway" not in banner:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, banner
            banner += line
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        pidfd = os.pidfd_open(int(children[0]))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        ready, _, _ = await asyncio.to_thread(select.select, [pidfd], [], [], 30)
        assert ready == [pidfd], "the gateway outlived its server"
        os.close(pidfd)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
