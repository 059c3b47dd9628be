"""GET /v1/jobs:watch, job changes as server-sent events, over a real server
and real HTTP: ids are revisions, filters, snapshots, heartbeats, errors
before the stream (JSON with their HTTP status) and after it (`event:
error`), keys and projects, shared upstream calls, slow readers, lost
clients, and resumption with Last-Event-ID across gateway and server
restarts with no gap and no repeat."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import grpc
import pytest

from mediajobs.server.app import App, build_server
from mediajobs.server.config import Config
from mediajobs.server.gateway import sse
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import FakeClock, gateway_app, start_app
from test_auth import make_key

READ_TIMEOUT = 30.0


@dataclass
class Message:
    """One SSE message as EventSource parses it (comments kept for the test)."""

    event: str = ""
    id: str | None = None
    data: str = ""
    retry: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """The SSE parser of the HTML standard (LF line ends, which the gateway
    writes), over an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.last_id: str | None = None

    async def next(self, timeout: float = READ_TIMEOUT) -> Message | None:
        """The next message (a comment-only one too); None at the end."""
        msg = Message()
        seen = False
        while True:
            line = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not line:
                return msg if seen else None
            text = line.decode().rstrip("\n")
            if text == "":
                if seen:
                    if msg.id is not None:
                        self.last_id = msg.id
                    return msg
                continue
            seen = True
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                msg.comments.append(value)
            elif name == "data":
                msg.data = f"{msg.data}\n{value}" if msg.data else value
            elif name in ("event", "id", "retry"):
                setattr(msg, name, value)

    async def event(self, timeout: float = READ_TIMEOUT) -> Message:
        """The next message with an event (comments and the retry hint skipped)."""
        while True:
            msg = await self.next(timeout)
            assert msg is not None, "the stream ended"
            if msg.event:
                return msg

    async def jobs(self, n: int) -> list[Message]:
        """The next n `job` events (progress bookmarks skipped)."""
        out: list[Message] = []
        while len(out) < n:
            msg = await self.event()
            assert msg.event in ("job", "progress"), msg
            if msg.event == "job":
                out.append(msg)
        return out

    async def end(self) -> list[Message]:
        """Read to the end; the messages on the way."""
        out = []
        while (msg := await self.next()) is not None:
            out.append(msg)
        return out


def hub_of(app: App) -> sse.SseHub:
    """The SSE hub of a server whose gateway runs inline (--http-gateway inline)."""
    return app.gateway.app[sse.SSE_KEY]  # type: ignore[no-any-return]


async def watch(s: aiohttp.ClientSession, base: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> SseReader:
    r = await s.get(f"{base}/v1/jobs:watch", params=params, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "text/event-stream" and r.headers["Cache-Control"] == "no-cache"
    return SseReader(r)


async def create(s: aiohttp.ClientSession, base: str, type_: str = "T", key: str = "",
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    r = await s.post(f"{base}/v1/jobs", json={"type": type_, "params": params or {}}, headers=headers)
    assert r.status == 200, await r.text()
    return await r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    async with gateway_app(str(tmp_path / "db.sqlite"), http_gateway="inline") as g:
        yield g


async def test_each_change_is_an_event_with_its_revision_as_id(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    before = await create(s, base)
    rd = await watch(s, base)
    hint = await rd.next()
    assert hint is not None and hint.retry == "2000"
    start = await rd.event()
    # From now: a bookmark at the current revision first.
    assert start.event == "progress" and start.id == before["revision"]
    assert start.json == {"revision": before["revision"], "progress": {}}
    made = [await create(s, base, "TRANSCODE") for _ in range(3)]
    got = await rd.jobs(3)
    assert [m.id for m in got] == [j["revision"] for j in made]
    first = int(start.id or 0) + 1
    assert [int(m.id or 0) for m in got] == list(range(first, first + 3))
    ev = got[0].json
    assert ev["type"] == "CREATED" and ev["revision"] == got[0].id and ev["job"]["id"] == made[0]["id"]
    assert ev["job"]["state"] == "PENDING" and "eventTime" in ev and "\n" not in got[0].data
    r = await s.post(f"{base}/v1/jobs/{made[0]['id']}:abort", json={})
    assert r.status == 200
    (abort,) = await rd.jobs(1)
    assert abort.json["type"] == "UPDATED" and abort.json["previousState"] == "PENDING"
    assert abort.json["job"]["state"] == "ABORTED"


async def test_filters_by_type_state_and_job(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    old = await create(s, base, "OLD")
    by_type = await watch(s, base, {"types": "A,B"})
    by_type_repeated = await watch(s, base, [("types", "A"), ("types", "B")])  # type: ignore[arg-type]
    by_state = await watch(s, base, {"states": "ABORTED"})
    by_job = await watch(s, base, {"jobIds": old["id"]})
    for rd in (by_type, by_type_repeated, by_state, by_job):
        assert (await rd.event()).event == "progress"
    a, _c, b = await create(s, base, "A"), await create(s, base, "C"), await create(s, base, "B")
    assert (await s.post(f"{base}/v1/jobs/{old['id']}:abort", json={})).status == 200
    for rd in (by_type, by_type_repeated):
        assert [m.json["job"]["id"] for m in await rd.jobs(2)] == [a["id"], b["id"]]
    (aborted,) = await by_state.jobs(1)
    assert aborted.json["job"]["id"] == old["id"] and aborted.json["job"]["state"] == "ABORTED"
    (only,) = await by_job.jobs(1)
    assert only.json["job"]["id"] == old["id"] and only.json["type"] == "UPDATED"
    # Nothing else came before: a later change of type A is the next event of the type watchers.
    last = await create(s, base, "B")
    for rd in (by_type, by_type_repeated):
        assert (await rd.jobs(1))[0].json["job"]["id"] == last["id"]


async def test_snapshot_events_have_no_id_and_end_with_a_progress(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    made = [await create(s, base, "SNAP") for _ in range(3)]
    await create(s, base, "OTHER")
    rd = await watch(s, base, {"sendInitialSnapshot": "true", "types": "SNAP"})
    snap = [await rd.event() for _ in range(3)]
    assert {m.json["job"]["id"] for m in snap} == {j["id"] for j in made}
    assert all(m.event == "job" and m.id is None and m.json["type"] == "SNAPSHOT" for m in snap)
    done = await rd.event()
    assert done.event == "progress" and done.json["progress"] == {"snapshotComplete": True}
    assert int(done.id or 0) >= int(made[-1]["revision"])
    new = await create(s, base, "SNAP")
    (ev,) = await rd.jobs(1)
    assert ev.id == new["revision"] and ev.json["type"] == "CREATED"
    # Last-Event-ID wins over sendInitialSnapshot: a reconnect does not get the snapshot again.
    again = await watch(s, base, {"sendInitialSnapshot": "true", "types": "SNAP"}, {"Last-Event-ID": str(done.id)})
    (ev2,) = await again.jobs(1)
    assert ev2.id == new["revision"]


async def test_bookmarks_move_a_quiet_stream_on(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    rd = await watch(s, base, {"types": "MINE", "progressInterval": "0.2s"})
    start = await rd.event()
    others = [await create(s, base, "OTHER") for _ in range(3)]
    # No change of its own, but bookmarks: every matching change up to there was sent.
    while int((mark := await rd.event()).id or 0) < int(others[-1]["revision"]):
        assert mark.event == "progress" and int(mark.id or 0) >= int(start.id or 0)
    assert mark.event == "progress" and mark.json["revision"] == mark.id
    # A resume from the bookmark starts after it (not back at the start).
    again = await watch(s, base, {"types": "MINE"}, {"Last-Event-ID": str(mark.id)})
    mine = await create(s, base, "MINE")
    (ev,) = await again.jobs(1)
    assert ev.id == mine["revision"]


async def test_heartbeat_on_an_idle_stream(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, base, s = gw
    hub_of(app).settings.heartbeat_s = 0.2
    rd = await watch(s, base)
    assert (await rd.event()).event == "progress"
    msg = await rd.next(timeout=10)
    assert msg is not None and msg.comments == ["keepalive"] and msg.event == "" and msg.id is None
    # The stream still works after heartbeats.
    job = await create(s, base)
    (ev,) = await rd.jobs(1)
    assert ev.json["job"]["id"] == job["id"]


async def test_errors_before_the_stream_are_json_with_their_status(tmp_path: Path) -> None:
    clock = FakeClock()
    app = await start_app(str(tmp_path / "db.sqlite"), clock=clock, event_retention_s=60, http_listen="127.0.0.1:0",
                          http_gateway="inline")
    base = f"http://127.0.0.1:{app.gateway.port}"
    try:
        async with aiohttp.ClientSession() as s:
            async def err(params: dict[str, str] | None = None, headers: dict[str, str] | None = None
                          ) -> tuple[int, dict[str, Any]]:
                r = await s.get(f"{base}/v1/jobs:watch", params=params, headers=headers)
                assert r.headers["Content-Type"].startswith("application/json")
                return r.status, (await r.json())["error"]

            for params, name in (({"bogus": "1"}, "bogus"), ({"states": "NOPE"}, "states"),
                                 ({"startRevision": "x"}, "startRevision"),
                                 ({"sendInitialSnapshot": "maybe"}, "sendInitialSnapshot")):
                code, e = await err(params)
                assert code == 400 and e["status"] == "INVALID_ARGUMENT" and name in e["message"], (params, e)
            code, e = await err(headers={"Last-Event-ID": "abc"})
            assert code == 400 and "Last-Event-ID" in e["message"]
            code, e = await err({"jobIds": "not-an-id"})  # the server's own validation
            assert code == 400 and e["status"] == "INVALID_ARGUMENT"
            code, e = await err({"types": ",".join(["t"] * 1001)})
            assert code == 400 and "1000" in e["message"]
            code, e = await err({"sendInitialSnapshot": "true", "startRevision": "3"})
            assert code == 400 and e["status"] == "INVALID_ARGUMENT"
            # A revision beyond the store's: 410, OUT_OF_RANGE, REVISION_IN_FUTURE.
            code, e = await err(headers={"Last-Event-ID": "1000"})
            assert code == 410 and e["status"] == "OUT_OF_RANGE" and e["code"] == 410
            assert any(d.get("reason") == "REVISION_IN_FUTURE" for d in e["details"])
            # Compacted history: 410 with the oldest revision still there.
            old = [await create(s, base) for _ in range(3)]
            clock.advance(120)
            new = await create(s, base)
            await app.sweep_once()
            code, e = await err(headers={"Last-Event-ID": old[0]["revision"]})
            assert code == 410 and e["status"] == "OUT_OF_RANGE"
            (info,) = [d for d in e["details"] if d.get("reason") == "REVISION_COMPACTED"]
            assert info["metadata"]["oldest_revision"] == new["revision"]
            rd = await watch(s, base, headers={"Last-Event-ID": str(int(new["revision"]) - 1)})
            assert (await rd.jobs(1))[0].id == new["revision"]
            # The gateway's own limit on streams: 503 with Retry-After.
            hub_of(app).settings.max_streams = 1
            r = await s.get(f"{base}/v1/jobs:watch")
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"]["details"][0]["reason"] == "TOO_MANY_STREAMS"
            r = await s.post(f"{base}/v1/jobs:watch")
            assert r.status == 405
    finally:
        await app.stop(None)


async def test_keys_pass_through_and_projects_see_only_their_own(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0", http_gateway="inline")
    base = f"http://127.0.0.1:{app.gateway.port}"
    try:
        admin, editor = await make_key(app, "admin"), await make_key(app, "editor")
        viewer, worker = await make_key(app, "viewer"), await make_key(app, "worker")
        acme = await make_key(app, "editor", project="acme")
        async with aiohttp.ClientSession() as s:
            r = await s.get(f"{base}/v1/jobs:watch")
            body = await r.json()
            assert r.status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            r = await s.get(f"{base}/v1/jobs:watch", headers={"Authorization": "Bearer mjk_nonsense"})
            assert r.status == 401
            r = await s.get(f"{base}/v1/jobs:watch", headers={"Authorization": f"Bearer {worker}"})
            assert r.status == 403 and (await r.json())["error"]["status"] == "PERMISSION_DENIED"

            mine = await watch(s, base, headers={"Authorization": f"Bearer {viewer}"})
            theirs = await watch(s, base, headers={"Authorization": f"Bearer {acme}"})
            start = await theirs.event()
            assert start.event == "progress"
            made = [await create(s, base, key=editor) for _ in range(2)]
            assert [m.json["job"]["id"] for m in await mine.jobs(2)] == [j["id"] for j in made]
            own = await create(s, base, key=acme)
            (first,) = await theirs.jobs(1)
            assert first.json["job"]["id"] == own["id"] and first.json["job"]["project"] == "acme"
            # Resuming from before the default project's jobs: still only acme's.
            again = await watch(s, base, headers={"Authorization": f"Bearer {acme}", "Last-Event-ID": str(start.id)})
            (first,) = await again.jobs(1)
            assert first.json["job"]["id"] == own["id"]

            # A key revoked while its stream is open: `event: error`, then the end.
            key_id = acme[4:30].upper()
            r = await s.post(f"{base}/v1/apiKeys/{key_id}:revoke", json={},
                             headers={"Authorization": f"Bearer {admin}"})
            assert r.status == 200, await r.text()
            for rd in (theirs, again):
                rest = await rd.end()
                errors = [m for m in rest if m.event == "error"]
                assert len(errors) == 1 and rest[-1] is errors[0]
                assert errors[0].json["error"]["status"] == "UNAUTHENTICATED" and errors[0].id is None
            r = await s.get(f"{base}/v1/jobs:watch", headers={"Authorization": f"Bearer {acme}",
                                                              "Last-Event-ID": str(start.id)})
            assert r.status == 401
    finally:
        await app.stop(None)


async def test_streams_share_an_upstream_call_and_catch_up_into_it(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, base, s = gw
    first = await create(s, base)
    readers = [await watch(s, base) for _ in range(3)]
    for rd in readers:
        assert (await rd.event()).event == "progress"
    # Three SSE streams from now with the same filters (and no key): one WatchJobs call.
    assert app.hub.watchers == 1 and len(hub_of(app).feeds) == 1
    made = [await create(s, base) for _ in range(5)]
    for rd in readers:
        assert [m.id for m in await rd.jobs(5)] == [j["revision"] for j in made]
    # A resume from before: its own call, until it caught up; then it joins the feed.
    late = await watch(s, base, headers={"Last-Event-ID": first["revision"]})
    assert [m.id for m in await late.jobs(5)] == [j["revision"] for j in made]
    await asyncio.wait_for(app.hub.wait_for_watchers(1), READ_TIMEOUT)
    more = [await create(s, base) for _ in range(3)]
    for rd in readers + [late]:
        assert [m.id for m in await rd.jobs(3)] == [j["revision"] for j in more]


async def test_a_slow_reader_leaves_the_feed_and_misses_nothing(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, base, s = gw
    hub = hub_of(app)
    hub.settings.max_pending_bytes = 64 * 1024
    fast = await watch(s, base)
    start = int((await fast.event()).id or 0)
    # A client that stops reading after the headers, with a small receive
    # window: what is sent to it piles up in the gateway's transport.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", app.gateway.port))
    await loop.sock_sendall(sock, b"GET /v1/jobs:watch HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"event: progress" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 4096), READ_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200") and f"id: {start}\n".encode() in head
    assert app.hub.watchers == 1  # both on the feed
    # 10 MB of events: more than the kernel's socket buffers (at most 4 MiB
    # on Linux) and 64 KiB take.
    blob = "x" * 500_000
    made = [await create(s, base, "BIG", params={"blob": blob}) for _ in range(20)]
    want = list(range(start + 1, start + 21))
    assert [int(j["revision"]) for j in made] == want
    # The fast reader gets everything from the feed meanwhile.
    assert [int(m.id or 0) for m in await fast.jobs(20)] == want
    assert hub.demotions >= 1, "the slow stream left the feed"
    # It reads now: every change once, in order (frames are whole within
    # each HTTP chunk, so the ids can be read off the raw bytes).
    raw = head
    while len(re.findall(rb"id: (\d+)\nevent: job\n", raw)) < 20:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), READ_TIMEOUT)
        assert data, "the stream ended"
        raw += data
    sock.close()
    assert [int(x) for x in re.findall(rb"id: (\d+)\nevent: job\n", raw)] == want


async def test_a_client_that_goes_away_ends_its_upstream_call(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, base, s = gw
    job = await create(s, base)
    rd = await watch(s, base, headers={"Last-Event-ID": "0"})  # its own call (a resume)
    assert (await rd.jobs(1))[0].json["job"]["id"] == job["id"]
    assert app.hub.watchers >= 1
    rd.resp.close()
    await asyncio.wait_for(app.hub.wait_for_watchers(0), READ_TIMEOUT)
    hub = hub_of(app)
    assert not hub.streams and not hub.feeds


# -- resumption across restarts ---------------------------------------------------------------


async def start_gateway(server_port: int, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.server.gateway", "--server", f"127.0.0.1:{server_port}", "--listen",
        "127.0.0.1:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "MEDIAJOBS_SSE_HEARTBEAT_S": "0.5", **env})
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert line.startswith("mediajobs-gateway listening on http://127.0.0.1:"), line
    return proc, line.split()[3]


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def restart_server(db: str, port: int = 0, http: bool = False) -> App:
    app = await build_server(Config(listen=f"127.0.0.1:{port}", db=db, http_listen="127.0.0.1:0" if http else ""))
    await app.start()
    return app


async def test_resume_with_last_event_id_across_gateway_and_server_restarts(tmp_path: Path) -> None:
    db = str(tmp_path / "db.sqlite")
    app = await restart_server(db)
    port = app.port
    gateway: asyncio.subprocess.Process | None
    gateway, base = await start_gateway(port)
    created: list[int] = []  # the revisions of every job made, from the replies
    received: list[int] = []  # the ids of every job event read, across all streams

    async def make(n: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            for _ in range(n):
                created.append((await stub.CreateJob(svc.CreateJobRequest(type="T"))).revision)

    async def read(rd: SseReader, n: int) -> None:
        received.extend(int(m.id or 0) for m in await rd.jobs(n))

    try:
        async with aiohttp.ClientSession() as s:
            rd = await watch(s, base)
            start = int((await rd.event()).id or 0)
            await make(3)
            await read(rd, 3)

            # 1. The gateway stops (the stream ends), jobs are made meanwhile,
            #    a new gateway process comes up, the client comes back with
            #    Last-Event-ID.
            await stop_gateway(gateway)
            assert [m.event for m in await rd.end()] in ([], ["progress"])
            await make(3)
            gateway, base = await start_gateway(port)
            rd = await watch(s, base, headers={"Last-Event-ID": rd.last_id or ""})
            await read(rd, 3)

            # 2. The server stops while the stream is open; a new server on
            #    the same database file and port. The gateway resumes its
            #    call by itself: the same SSE stream carries on.
            await app.stop(None)
            app = await restart_server(db, port)
            await make(3)
            await read(rd, 3)

            # 3. Server and gateway both go: the stream ends; jobs are made on
            #    a new server (another port) with the gateway inside it; the
            #    client reconnects there with Last-Event-ID.
            await stop_gateway(gateway)
            gateway = None
            await rd.end()
            await app.stop(None)
            app = await restart_server(db, http=True)
            port = app.port
            await make(3)
            rd = await watch(s, f"http://127.0.0.1:{app.gateway.port}", headers={"Last-Event-ID": rd.last_id or ""})
            await read(rd, 3)
            await make(2)
            await read(rd, 2)
        assert received == created, "every change once, in order"
        assert received == list(range(start + 1, start + 1 + len(created))), "revisions with no gap"
        assert len(set(received)) == len(received) == 14
    finally:
        if gateway is not None and gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
        await app.stop(None)


async def test_a_resume_while_the_server_is_away_waits_for_it(tmp_path: Path) -> None:
    """A reconnect with Last-Event-ID while the server restarts is answered
    200 (a browser would not retry a 503) and carries on once it is back."""
    db = str(tmp_path / "db.sqlite")
    app = await restart_server(db)
    port = app.port
    gateway, base = await start_gateway(port)
    try:
        async with aiohttp.ClientSession() as s:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                job = await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(svc.CreateJobRequest(type="T"))
            await app.stop(None)
            r = await s.get(f"{base}/v1/jobs:watch")  # from now: nothing to resume, so 503
            assert r.status == 503 and (await r.json())["error"]["status"] == "UNAVAILABLE"
            rd = await watch(s, base, headers={"Last-Event-ID": str(job.revision)})
            app = await restart_server(db, port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                later = await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(svc.CreateJobRequest(type="T"))
            (ev,) = await rd.jobs(1)
            assert int(ev.id or 0) == later.revision == job.revision + 1
            assert ev.json["type"] == res.JobEvent.Type.Name(res.JobEvent.CREATED)
    finally:
        if gateway.returncode is None:
            await stop_gateway(gateway)
        await app.stop(None)


async def test_a_server_away_longer_than_the_resume_window_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    app = await restart_server(str(tmp_path / "db.sqlite"))
    gateway, base = await start_gateway(app.port, MEDIAJOBS_SSE_RESUME_WINDOW_S="0.5")
    try:
        async with aiohttp.ClientSession() as s:
            rd = await watch(s, base)
            assert (await rd.event()).event == "progress"
            await app.stop(None)
            rest = await rd.end()
            assert rest and rest[-1].event == "error", rest
            err = rest[-1].json["error"]
            assert err["status"] == "UNAVAILABLE" and err["code"] == 503 and "resumed" in err["message"]
    finally:
        await stop_gateway(gateway)
