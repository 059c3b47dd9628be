"""`mediajobs live` and the client's live job methods, end to end against a
real server over a real channel, with the CLI run in a daemon thread (as in
test_cli_bulk.py). No worker runs, except where the test plays one (the
WorkerService calls a live worker makes) and in the last test (the reference
live worker, with the synthetic publisher of `live publish-test` in a child
process). `live watch` is followed through its own output: the test waits
for a line, never sleeps."""
from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import re
import socket
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2

from mediajobs.client import MediaJobsClient, MediaJobsError
from mediajobs.client.cli import main
from mediajobs.client.cli.live import masked_url
from mediajobs.client.render import message_to_dict
from mediajobs.server.app import App
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc
from conftest import start_app
from scripted import spawn

LiveJob = lres.LiveJob
S = LiveJob.State
UNKNOWN_ID = "01HA255YE6H6DEETJ5M6595ZDA"
INGEST = "rtmp://live.example.com:1935/live"
PLAYBACK = "https://cdn.example.com/media"


class Stdout(io.StringIO):
    """sys.stdout for a CLI running in a thread: the test waits until what
    it wrote satisfies a predicate."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def write(self, s: str) -> int:
        with self._cond:
            n = super().write(s)
            self._cond.notify_all()
            return n

    def json_lines(self) -> list[dict[str, Any]]:
        with self._cond:
            text = self.getvalue()
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], running: Future[Any] | None = None,
                 timeout: float = 30.0) -> list[dict[str, Any]]:
        def ready() -> bool:
            return pred(self.json_lines()) or (running is not None and running.done())

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(f"not printed within {timeout} s; so far: {self.getvalue()!r}")
        if running is not None and running.done() and not pred(self.json_lines()):
            raise AssertionError(f"the CLI ended ({running.result()!r}) before printing it: {self.getvalue()!r}")
        return self.json_lines()


class Env:
    """A real server, the CLI run in a daemon thread against it, and async
    stubs on the test's loop to check what it stored (and to play a live
    worker)."""

    def __init__(self, app: App, ch: grpc.aio.Channel, tmp: Path) -> None:
        self.target = f"127.0.0.1:{app.port}"
        self.live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.tmp = tmp

    def run(self, *argv: str) -> Future[int]:
        return spawn(main, ["--server", self.target, *argv])

    async def cli(self, *argv: str) -> int:
        # A daemon thread (not asyncio.to_thread): a CLI left waiting by a
        # failed test must not keep the event loop's executor from closing.
        async with asyncio.timeout(60):
            return await asyncio.wrap_future(self.run(*argv))

    async def get(self, ref: str) -> LiveJob:
        return await self.live.GetLiveJob(lsvc.GetLiveJobRequest(id=ref))

    async def create(self, destination: str, **kw: Any) -> LiveJob:
        return await self.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=LiveJob(
            bucket=kw.pop("bucket", "events"), destination=destination,
            input=lres.LiveInput(server_type=lres.LiveInput.RTMP), **kw)))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=tmp_path / "storage",
                          lease_sweep_interval_s=3600, live_ingest_url=INGEST, live_playback_base_url=PLAYBACK)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Env(app, ch, tmp_path)
    finally:
        await app.stop(None)


def details(text: str) -> dict[str, str]:
    """The `label: value` lines of a details view (continuation lines left out)."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        m = re.match(r"^([a-z_]+):\s+(.*)$", ln)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def table(text: str) -> list[dict[str, str]]:
    """The rows of a table (columns split on two or more spaces)."""
    head, *rows = [ln for ln in text.splitlines() if ln and not ln.startswith("page ")]
    names = re.split(r"\s{2,}", head.strip())
    return [dict(zip(names, re.split(r"\s{2,}", r.strip()))) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the life of a live job ------------------------------------------------------------------


async def test_create_list_get_start_stop_timings_outputs_stats_reset_and_delete(env: Env, capsys) -> None:
    create = ("live", "create", "--bucket", "events", "--destination", "studio-a/main", "--description",
              "Studio A keynote", "--label", "team=av", "--reconnect-window", "90", "--max-duration", "3600", "--cdn",
              "--request-id", "create-1")
    assert await env.cli(*create) == 0
    cap = capsys.readouterr()
    head, *_ = cap.out.splitlines()
    m = re.fullmatch(r"live job (\w{26}) \(#1\) created", head)
    assert m, cap.out
    live_id = m.group(1)
    stored = await env.get(live_id)
    shown = details(cap.out)
    assert (shown["id"], shown["name"], shown["state"]) == (live_id, stored.name, "OFFLINE")
    assert shown["ingest_url"] == f"{INGEST}/{stored.stream_key}" == stored.ingest_url, "the key, shown once"
    assert shown["master_playlist"] == "live/events/studio-a/main/master.m3u8"
    assert shown["playback_url"] == f"{PLAYBACK}/live/events/studio-a/main/master.m3u8"
    assert "keep it secret" in cap.err and f"mediajobs live start {live_id}" in cap.err
    assert (stored.description, dict(stored.labels), stored.cdn_distribution) == ("Studio A keynote",
                                                                                   {"team": "av"}, True)
    assert (stored.reconnect_window.seconds, stored.max_duration.seconds) == (90, 3600)
    # The same request id: the same live job.
    assert await env.cli(*create, "-q") == 0
    assert capsys.readouterr().out == live_id + "\n"

    other = await env.create("studio-b", description="Panel")
    assert await env.cli("live", "list", "--search", "KEYNOTE") == 0
    cap = capsys.readouterr()
    (row,) = table(cap.out)
    assert (row["ID"], row["NAME"], row["STATE"], row["DESTINATION"]) == (live_id, stored.name, "OFFLINE",
                                                                          "events/studio-a/main")
    assert stored.stream_key not in cap.out and "STREAM KEY" not in cap.out, "keys hidden by default"
    assert await env.cli("live", "list", "--page", "2", "--page-size", "1") == 0
    out = capsys.readouterr().out
    assert [r["ID"] for r in table(out)] == [live_id], "newest first: page 2 of 1-item pages is the first made"
    assert out.splitlines()[-1] == "page 2 of 2 (2 live jobs)"
    assert await env.cli("live", "list", "--show-keys") == 0
    rows = table(capsys.readouterr().out)
    assert {(r["ID"], r["STREAM KEY"]) for r in rows} == {(live_id, stored.stream_key),
                                                          (other.id, other.stream_key)}

    assert await env.cli("live", "get", stored.name) == 0  # by name
    out = capsys.readouterr().out
    got = details(out)
    assert (got["id"], got["state"], got["destination"], got["template"]) == (
        live_id, "OFFLINE", "events/studio-a/main", "hls-live-360p-240p")
    assert got["ingest_url"] == f"{INGEST}/<stream key: --show-key shows it>" and stored.stream_key not in out
    assert "stream_key" not in got and got["reconnect_window"] == "1 min 30 s" and got["labels"] == "team=av"
    assert "360p: live/events/studio-a/main/360p/index.m3u8" in out
    assert await env.cli("live", "get", live_id, "--show-key") == 0
    got = details(capsys.readouterr().out)
    assert (got["stream_key"], got["ingest_url"]) == (stored.stream_key, stored.ingest_url)

    # start and stop by id: no worker runs, so STARTING, then STOPPED at once.
    assert await env.cli("live", "start", live_id) == 0
    cap = capsys.readouterr()
    started = details(cap.out)
    assert cap.out.startswith(f"live job {live_id} STARTING\n") and started["state"] == "STARTING"
    assert started["playback"] == f"{PLAYBACK}/live/events/studio-a/main/master.m3u8"
    assert stored.stream_key not in cap.out + cap.err, "the key looked up is never printed"
    running = await env.get(live_id)
    assert running.state == S.STARTING and running.session_count == 1
    assert started["session"] == f"1 (job {running.current_job_id})"
    assert await env.cli("live", "stop", live_id) == 0
    cap = capsys.readouterr()
    assert details(cap.out)["state"] == "STOPPED" and stored.stream_key not in cap.out + cap.err
    assert (await env.get(live_id)).state == S.STOPPED

    assert await env.cli("live", "timings", live_id) == 0
    rows = table(capsys.readouterr().out)
    assert [(r["STATE"], r["EVENT"]) for r in rows] == [
        ("OFFLINE", "CREATED"), ("STARTING", "START_REQUESTED"), ("STARTING", "STOP_REQUESTED"),
        ("STOPPED", "ABORTED")]
    assert await env.cli("live", "outputs", live_id) == 0
    rows = table(capsys.readouterr().out)
    assert [(r["OUTPUT"], r["NAME"], r["STATUS"], r["PROGRESS"], r["SEGMENTS"]) for r in rows] == [
        ("1", "360p", "STOPPED", "100%", "0"), ("2", "240p", "STOPPED", "100%", "0")]
    assert rows[0]["MANIFEST"] == "live/events/studio-a/main/360p/index.m3u8"
    assert await env.cli("live", "stats", live_id) == 0
    assert capsys.readouterr().out == "no statistics yet: no publisher has been connected\n"

    assert await env.cli("live", "reset-key", live_id) == 0
    cap = capsys.readouterr()
    renewed = await env.get(live_id)
    assert renewed.stream_key != stored.stream_key and renewed.key_resets == 1
    assert details(cap.out)["ingest_url"] == f"{INGEST}/{renewed.stream_key}"
    assert cap.out.startswith(f"live job {live_id}: new stream key (reset 1 time)")
    # The old key no longer starts it; the new one does.
    assert await env.cli("live", "start", stored.stream_key) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert await env.cli("live", "start", renewed.stream_key) == 0
    assert details(capsys.readouterr().out)["state"] == "STARTING"
    assert await env.cli("live", "stop", renewed.stream_key) == 0
    capsys.readouterr()

    assert await env.cli("live", "delete", live_id) == 0
    assert capsys.readouterr().out == f"deleted live job {live_id}\n"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.get(live_id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert await env.cli("live", "delete", live_id) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert await env.cli("live", "delete", live_id, "--allow-missing") == 0


async def test_json_output_is_the_servers_live_job_with_the_key_only_when_shown(env: Env, capsys) -> None:
    assert await env.cli("live", "create", "--bucket", "events", "--destination", "json/one", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    stored = await env.get(created["id"])
    assert created == message_to_dict(stored), "create prints the whole live job, key included"
    assert created["stream_key"] == stored.stream_key and created["number"] == 1, "int64 as a JSON number"

    assert await env.cli("live", "get", created["id"], "--json") == 0
    hidden = json.loads(capsys.readouterr().out)
    assert "stream_key" not in hidden and "ingest_url" not in hidden
    assert hidden == {k: v for k, v in created.items() if k not in ("stream_key", "ingest_url")}
    assert await env.cli("live", "get", created["id"], "--json", "--show-key") == 0
    assert json.loads(capsys.readouterr().out) == created

    at = dt.datetime(2099, 5, 1, 18, 0, tzinfo=dt.timezone.utc)
    assert await env.cli("live", "start", created["id"], "--at", "2099-05-01T18:00:00Z",
                         "--until", "2099-05-01T20:00:00+00:00", "--json") == 0
    cap = capsys.readouterr()
    started = json.loads(cap.out)
    assert stored.stream_key not in cap.out
    now = await env.get(created["id"])
    assert started["online"] is True and started["playback_path_url"] == now.playback_url
    assert started["live_job"]["state"] == "STARTING" and started["live_job"]["session_count"] == 1
    assert now.start_time.ToDatetime(tzinfo=dt.timezone.utc) == at
    assert now.finish_time.ToDatetime(tzinfo=dt.timezone.utc) == at + dt.timedelta(hours=2)
    assert started["live_job"] == {k: v for k, v in message_to_dict(now).items()
                                   if k not in ("stream_key", "ingest_url")}

    assert await env.cli("live", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    page = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest())
    assert listed == {"live_jobs": [message_to_dict(lj) for lj in page.live_jobs], "total_size": 1,
                      "page_info": message_to_dict(page.page_info)}
    assert "stream_key" not in listed["live_jobs"][0]
    assert await env.cli("live", "list", "--json", "--show-keys", "--all") == 0
    assert json.loads(capsys.readouterr().out)["live_jobs"][0]["stream_key"] == stored.stream_key

    for argv, request, rpc in (
            (("outputs",), lsvc.ListLiveOutputsRequest(live_job_id=created["id"]), env.live.ListLiveOutputs),
            (("timings",), lsvc.ListLiveTimingsRequest(live_job_id=created["id"]), env.live.ListLiveTimings)):
        assert await env.cli("live", *argv, created["id"], "--json") == 0
        doc = json.loads(capsys.readouterr().out)
        resp = await rpc(request)
        key = "outputs" if argv == ("outputs",) else "timings"
        assert doc[key] == [message_to_dict(x) for x in getattr(resp, key)] and doc[key]
    assert await env.cli("live", "stats", created["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out) == {}, "no statistics yet"

    assert await env.cli("live", "reset-key", created["id"], "--json") == 0
    reset = json.loads(capsys.readouterr().out)
    assert reset["stream_key"] == (await env.get(created["id"])).stream_key != stored.stream_key
    assert await env.cli("live", "delete", created["id"], "--json") == 1, "a session is scheduled"
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert await env.cli("live", "delete", created["id"], "--force", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"deleted_id": created["id"]}


async def test_list_states_pages_and_all(env: Env, capsys) -> None:
    made = [await env.create(f"room-{i}", description=f"{'Keynote' if i % 2 else 'Panel'} {i}") for i in range(5)]
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=made[1].stream_key, online=True))
    assert await env.cli("live", "list", "--state", "starting") == 0
    assert [r["ID"] for r in table(capsys.readouterr().out)] == [made[1].id]
    assert await env.cli("live", "list", "--search", "keynote", "--state", "OFFLINE,STARTING") == 0
    assert [r["ID"] for r in table(capsys.readouterr().out)] == [made[3].id, made[1].id]
    assert await env.cli("live", "list", "--page-size", "2") == 0
    cap = capsys.readouterr()
    assert [r["ID"] for r in table(cap.out)] == [made[4].id, made[3].id]
    assert "-- 2 of 5 live jobs; more with --page 2 (or --all)" in cap.err
    assert await env.cli("live", "list", "--page", "3", "--page-size", "2", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [x["id"] for x in doc["live_jobs"]] == [made[0].id] and doc["total_size"] == 5
    assert doc["page_info"] == {"total_count": 5, "page_index": 3, "page_size": 2, "total_pages": 3,
                                "has_previous_page": True}
    assert await env.cli("live", "list", "--all", "--page-size", "2") == 0
    assert [r["ID"] for r in table(capsys.readouterr().out)] == [m.id for m in reversed(made)]


async def test_errors_exit_1_with_the_servers_message_and_2_for_bad_usage(env: Env, capsys) -> None:
    for argv in (("get", UNKNOWN_ID), ("start", UNKNOWN_ID), ("outputs", UNKNOWN_ID), ("stats", UNKNOWN_ID),
                 ("timings", UNKNOWN_ID), ("reset-key", UNKNOWN_ID), ("watch", UNKNOWN_ID)):
        assert await env.cli("live", *argv) == 1, argv
        cap = capsys.readouterr()
        assert cap.out == ""
        assert f"mediajobs: NOT_FOUND: live job '{UNKNOWN_ID}' does not exist" in cap.err, argv
        assert "reason: LIVE_JOB_NOT_FOUND" in cap.err
    # A stream key nobody has: the server's message, which never echoes a key.
    assert await env.cli("live", "stop", "3f1b7c1e-2f4e-4a53-9a38-0d7a4b1c2d3e") == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    lj = await env.create("errors")
    for argv, message in (
            (("start", lj.id, "--at", "tomorrow"), "'tomorrow' is not an ISO 8601 time"),
            (("start", lj.id, "--at", "2099-01-02", "--until", "2099-01-01"), "--until must be after --at"),
            (("list", "--page", "2", "--all"), "not allowed with"),
            (("list", "--state", "ONLINE"), "unknown live job state 'ONLINE'"),
            (("create", "--bucket", "b", "--destination", "d", "--file-path", "x.m3u8"), "--server-type hls"),
            (("create", "--bucket", "b", "--destination", "d", "--server-type", "webrtc"), "invalid choice"),
            (("create", "--bucket", "b"), "--destination"),
            (("create", "--bucket", "b", "--destination", "d", "--max-duration", "-1"), "0 or more"),
            (("watch", lj.id, "--interval", "0"), "--interval must be between"),
            (("publish-test", "rtmp://127.0.0.1/live/k", "--size", "321x180"), "must be even"),
            (("publish-test", "rtmp://127.0.0.1/live/k", "--fps", "0"), "at least 1"),
            (("clip", lj.id), "required: --from, --to")):
        assert await env.cli("live", *argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    # The server's INVALID_ARGUMENT: exit 2, with the offending field.
    assert await env.cli("live", "create", "--bucket", "no/slashes", "--destination", "d") == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "field live_job.bucket:" in err
    assert await env.cli("live", "start", lj.id, "--until", "2001-01-01T00:00:00Z") == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    # A refused state change: exit 1.
    assert await env.cli("live", "create", "--bucket", "events", "--destination", "errors") == 1
    assert "ALREADY_EXISTS" in capsys.readouterr().err


async def test_start_and_stop_by_name_and_by_key_never_print_the_key(env: Env, capsys) -> None:
    lj = await env.create("by-key")
    assert await env.cli("live", "start", lj.name, "--json") == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["live_job"]["state"] == "STARTING" and lj.stream_key not in cap.out + cap.err
    assert await env.cli("live", "stop", lj.stream_key) == 0
    cap = capsys.readouterr()
    assert details(cap.out)["state"] == "STOPPED" and lj.stream_key not in cap.out + cap.err
    timings = await env.live.ListLiveTimings(lsvc.ListLiveTimingsRequest(live_job_id=lj.id))
    assert [t.child_status for t in timings.timings] == ["CREATED", "START_REQUESTED", "STOP_REQUESTED", "ABORTED"]


async def test_timings_of_one_output_and_every_page(env: Env, capsys) -> None:
    lj = await env.create("log")
    for _ in range(3):  # 1 + 3 x 3 entries: CREATED, then START_REQUESTED, STOP_REQUESTED, ABORTED per session
        await env.cli("live", "start", lj.id)
        await env.cli("live", "stop", lj.id)
    capsys.readouterr()
    assert await env.cli("live", "timings", lj.id, "--page-size", "4") == 0
    cap = capsys.readouterr()
    assert len(table(cap.out)) == 4 and "-- 4 of 10 entries; more with --all" in cap.err
    assert await env.cli("live", "timings", lj.id, "--page-size", "4", "--all", "--output", "1") == 0
    rows = table(capsys.readouterr().out)
    assert len(rows) == 10 and [r["SEQ"] for r in rows] == sorted((r["SEQ"] for r in rows), key=int)
    assert {r["OUTPUT"] for r in rows} == {"-"}, "the live job's own entries"


# -- watch ------------------------------------------------------------------------------------------


async def test_watch_follows_a_live_job_until_it_is_stopped(env: Env, monkeypatch, capsys) -> None:
    lj = await env.create("watched")
    started = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    out = Stdout()
    monkeypatch.setattr(sys, "stdout", out)
    watch = env.run("live", "watch", lj.id, "--json")
    # The watch prints the state it found once its stream is open: a stop from now on is seen.
    await asyncio.wrap_future(spawn(out.wait_for, lambda lines: bool(lines), watch))
    other = await env.create("not-watched")  # changes of another live job are not shown
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=other.stream_key, online=True))
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    async with asyncio.timeout(30):
        assert await asyncio.wrap_future(watch) == 0
    session = started.live_job.current_job_id
    assert out.json_lines() == [
        {"live_job_id": lj.id, "state": "STARTING", "session_job_id": session, "segments": 0},
        {"live_job_id": lj.id, "state": "STOPPED", "session_job_id": session, "segments": 0}]
    # Human output: a line per change (stdout is not a terminal); a STOPPED live job ends the watch at once.
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert await env.cli("live", "watch", lj.name) == 0
    line = sys.stdout.getvalue()  # type: ignore[attr-defined]
    assert re.fullmatch(rf"live job {lj.id}  STOPPED\s+0 segments\n", line), line


async def test_watch_shows_the_stream_and_exits_1_when_the_session_fails(env: Env, monkeypatch, capsys) -> None:
    lj = await env.create("failing")
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    out = Stdout()
    monkeypatch.setattr(sys, "stdout", out)
    watch = env.run("live", "watch", lj.id, "--json", "--interval", "0.2")

    async def until(state: str) -> list[dict[str, Any]]:
        return await asyncio.wrap_future(spawn(out.wait_for, lambda ls: bool(ls) and ls[-1]["state"] == state,
                                               watch))

    await until("STARTING")
    # The test plays the live worker: it takes the session, gets a publisher, then fails.
    got = await env.workers.AcquireJobs(wsvc.AcquireJobsRequest(
        job_types=["LIVE_ENCODE"], max_jobs=1, no_wait=True, identity="live-worker-1",
        lease_duration=duration_pb2.Duration(seconds=60),
        lock_key=res.LockKey(scheduler_id="host1", worker_id="live", batch_index=0)))
    (leased,) = got.jobs

    async def report(state: int, **kw: Any) -> None:
        await env.workers.ReportLiveStatus(wsvc.ReportLiveStatusRequest(
            job_id=leased.job.id, lease_token=leased.lease_token, live_state=state, **kw))

    await report(S.AWAITING_INPUT)
    await until("AWAITING_INPUT")
    stats = lres.LiveStatistics(width=320, height=180, frame_rate=15, video_data_rate=400, audio_data_rate=64,
                                video_codec="h264", audio_codec="aac", encoder="Lavf62")
    await report(S.LIVE, statistics=stats, outputs=[lres.LiveOutput(output_id=1, counter=7),
                                                    lres.LiveOutput(output_id=2, counter=6)])
    lines = await until("LIVE")
    assert lines[-1] == {"live_job_id": lj.id, "state": "LIVE", "session_job_id": leased.job.id, "width": 320,
                         "height": 180, "fps": 15.0, "kbps": 464.0, "segments": 7}
    # Statistics change without a state change: read again on the next progress bookmark.
    stats.measured_fps, stats.measured_video_kbps, stats.measured_audio_kbps = 14.5, 380.5, 63.5
    await report(0, statistics=stats, outputs=[lres.LiveOutput(output_id=1, counter=9)])
    lines = await asyncio.wrap_future(spawn(out.wait_for, lambda ls: ls[-1].get("segments") == 9, watch))
    assert (lines[-1]["fps"], lines[-1]["kbps"], lines[-1]["state"]) == (14.5, 444.0, "LIVE")
    await env.workers.FailJob(wsvc.FailJobRequest(
        job_id=leased.job.id, lease_token=leased.lease_token,
        error=status_pb2.Status(code=code_pb2.INTERNAL, message="the encoder crashed")))
    async with asyncio.timeout(30):
        assert await asyncio.wrap_future(watch) == 1
    last = out.json_lines()[-1]
    assert last["state"] == "FAILED" and "the encoder crashed" in last["error"]["message"]
    states = [ln["state"] for ln in out.json_lines()]
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s] == [
        "STARTING", "AWAITING_INPUT", "LIVE", "FAILED"]
    assert f"mediajobs: live job {lj.id} FAILED: INTERNAL:" in capsys.readouterr().err
    # The statistics as `live stats` shows them.
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert await env.cli("live", "stats", lj.id) == 0
    shown = details(sys.stdout.getvalue())  # type: ignore[attr-defined]
    assert shown["video"] == "h264 320x180 15 fps 400 kbit/s" and shown["encoder"] == "Lavf62"
    assert shown["measured"] == "14.5 fps, video 380.5 kbit/s, audio 63.5 kbit/s"


# -- publish-test ----------------------------------------------------------------------------------


async def test_publish_test_to_a_url_nothing_listens_on_exits_1(env: Env, capsys) -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/a-secret-stream-key"
    assert await env.cli("live", "publish-test", url, "--seconds", "1", "--open-timeout", "0.3") == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "nothing accepted the connection within 0.3 s (Connection refused)" in cap.err
    assert "a-secret-stream-key" not in cap.err and "/live/<stream key>" in cap.err


def test_masked_url_hides_the_stream_key() -> None:
    assert masked_url("rtmp://h:1935/live/k3y") == "rtmp://h:1935/live/<stream key>"
    assert masked_url("srt://h:9000?streamid=k3y") == "srt://h:9000?<query>"
    assert masked_url("/tmp/out.flv") == "/tmp/out.flv"


def test_help_lists_every_action_with_examples(capsys) -> None:
    assert main(["--help"]) == 0
    assert re.search(r"^\s+live\s", capsys.readouterr().out, re.M)
    assert main(["live", "--help"]) == 0
    out = capsys.readouterr().out
    actions = ("create", "list", "get", "start", "stop", "outputs", "timings", "stats", "reset-key", "delete",
               "watch", "publish-test", "clip", "clips")
    for action in actions:
        assert re.search(rf"^\s+{action}\s", out, re.M), action
    for action in actions:
        assert main(["live", action, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Examples:" in text and f"\n  mediajobs live {action} " in text.split("Examples:")[1], action


# -- the client library --------------------------------------------------------------------------------


async def test_client_methods(env: Env) -> None:
    def run() -> None:
        with MediaJobsClient(env.target) as c:
            lj = c.create_live_job("events", "lib/one", description="via the library", server_type="rtmp",
                                   reconnect_window=dt.timedelta(seconds=30), max_duration=7200.0,
                                   labels={"k": "v"})
            assert (lj.reconnect_window.seconds, lj.max_duration.seconds, lj.labels["k"]) == (30, 7200, "v")
            assert [x.id for x in c.iter_live_jobs(search="library")] == [lj.id]
            assert c.list_live_jobs(states=["OFFLINE"], include_stream_key=True).live_jobs[0].stream_key == \
                lj.stream_key
            resp = c.start_live_job(lj.name)
            assert resp.online and resp.live_job.state == S.STARTING
            assert c.stop_live_job(lj.id).live_job.state == S.STOPPED
            assert [o.name for o in c.iter_live_outputs(lj.id)] == ["360p", "240p"]
            assert [t.child_status for t in c.iter_live_timings(lj.id)][-1] == "ABORTED"
            assert c.get_live_statistics(lj.id) == lres.LiveStatistics()
            assert c.reset_stream_key(lj.id).stream_key != lj.stream_key
            c.delete_live_job(lj.id)
            c.delete_live_job(lj.id, allow_missing=True)
            with pytest.raises(MediaJobsError) as e:
                c.get_live_job(lj.id)
            assert (e.value.code, e.value.reason) == (grpc.StatusCode.NOT_FOUND, "LIVE_JOB_NOT_FOUND")
            with pytest.raises(ValueError):
                c.list_live_jobs(states=["SLEEPING"])

    async with asyncio.timeout(60):
        await asyncio.wrap_future(spawn(run))


# -- end to end: the reference live worker and the test-pattern publisher -------------------------------------


TINY_LIVE = mres.JobTemplate(
    outputs=[mres.OutputSpec(name="r90", container="hls", video_codec="h264", width=160, height=90,
                             video_bit_rate_bps=200_000, audio_codec="aac", audio_bit_rate_bps=64_000)],
    segment_duration=duration_pb2.Duration(seconds=1))


async def cli_process(target: str, *argv: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI in a child process (PyAV's RTMP client holds the GIL while it
    connects, so it cannot share a process with the RTMP front door)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.client", "--server", target, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def test_publish_test_goes_live_through_the_reference_worker(env: Env, monkeypatch, capsys) -> None:
    from mediajobs.client.live.worker import LiveWorker

    worker = LiveWorker(env.target, env.tmp / "storage", "127.0.0.1:0", slots=1, lease_duration=10,
                        report_interval=0.5)
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TINY_LIVE,
                                                                        job_template_id="tiny-live"))
        assert await env.cli("live", "create", "--bucket", "e2e", "--destination", "cli", "--template",
                             "tiny-live", "-q") == 0
        live_id = capsys.readouterr().out.strip()
        key = (await env.get(live_id)).stream_key
        assert await env.cli("live", "start", live_id) == 0
        out = Stdout()
        monkeypatch.setattr(sys, "stdout", out)
        watch = env.run("live", "watch", live_id, "--json", "--interval", "0.2")
        await asyncio.wrap_future(spawn(out.wait_for, lambda ls: any(x["state"] == "AWAITING_INPUT" for x in ls),
                                        watch))
        url = f"rtmp://127.0.0.1:{worker.port}/live/"
        code, stdout, stderr = await cli_process(env.target, "live", "publish-test", url + "not-the-key",
                                                 "--seconds", "1", "--open-timeout", "5")
        assert code == 1 and stdout == ""
        assert "the server refused the stream" in stderr and "not-the-key" not in stderr
        code, stdout, stderr = await cli_process(env.target, "live", "publish-test", url + key, "--seconds", "2",
                                                 "--open-timeout", "5")
        assert code == 0, stderr
        assert re.fullmatch(r"published 2 s of test pattern to rtmp://127\.0\.0\.1:\d+/live/<stream key>: 30 video "
                            r"frames \(320x180, 15 fps\), \d+ audio frames\n", stdout), stdout
        assert key not in stdout + stderr
        await asyncio.wrap_future(spawn(out.wait_for, lambda ls: ls[-1]["state"] == "RECONNECTING", watch))
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=key, online=False))
        async with asyncio.timeout(30):
            assert await asyncio.wrap_future(watch) == 0
        lines = out.json_lines()
        states = [x["state"] for x in lines]
        assert {"AWAITING_INPUT", "LIVE", "RECONNECTING", "STOPPED"} <= set(states) and states[-1] == "STOPPED"
        final = lines[-1]
        assert (final["width"], final["height"]) == (320, 180) and final["segments"] >= 1
        assert (env.tmp / "storage" / "live" / "e2e" / "cli" / "r90" / "index.m3u8").read_text().rstrip().endswith(
            "#EXT-X-ENDLIST")
    finally:
        worker.stop(0)
        await asyncio.wait_for(task, 30)


async def test_clip_waits_for_its_job_and_clips_lists_it(env: Env, monkeypatch, capsys) -> None:
    lj = await env.create("clipped")
    assert await env.cli("live", "clip", lj.id, "--from", "2030-05-01T18:10:00Z", "--to",
                         "2030-05-01T18:09:00Z") == 2
    out = Stdout()
    monkeypatch.setattr(sys, "stdout", out)
    waiting = env.run("--json", "live", "clip", lj.id, "--from", "2030-05-01T18:10:00Z", "--to",
                      "2030-05-01T18:12:00Z", "--entry", "highlight", "--wait")
    # The test plays the live worker: it takes the LIVE_CLIP job and completes it.
    got = await env.workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["LIVE_CLIP"], max_jobs=1,
                                                                wait_timeout=duration_pb2.Duration(seconds=30)))
    assert len(got.jobs) == 1
    job = got.jobs[0].job
    (Path(env.tmp) / "storage" / "clip.mp4").write_bytes(b"\0" * 16)
    from google.protobuf import struct_pb2
    result = struct_pb2.Struct()
    result.update({"playlist": "live/events/clipped/clips/x/clip.m3u8", "mp4": "clip.mp4", "duration_s": 120.0,
                   "segments": 60})
    await env.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=job.id, lease_token=got.jobs[0].lease_token,
                                                          result=result))
    assert await asyncio.wrap_future(waiting) == 0
    clip = json.loads(out.getvalue())
    assert clip["state"] == "SUCCEEDED" and clip["mp4"] == "clip.mp4" and clip["segments"] == 60
    assert clip.get("entryId") or clip.get("entry_id")
    monkeypatch.undo()
    assert await env.cli("live", "clips", lj.id) == 0
    text = capsys.readouterr().out
    assert "SUCCEEDED" in text and "120.0 s (60 segments)" in text


async def test_create_standard_shows_the_backup_ingest_once(env: Env, capsys) -> None:
    assert await env.cli("live", "create", "--bucket", "events", "--destination", "redundant",
                         "--input-class", "standard") == 0
    shown = details(capsys.readouterr().out)
    assert shown["backup_ingest_url"].startswith(INGEST + "/") and shown["backup_ingest_url"] != shown["ingest_url"]
    assert await env.cli("live", "get", shown["id"]) == 0
    hidden = details(capsys.readouterr().out)
    assert "<backup key" in hidden["backup_ingest_url"]
    assert await env.cli("live", "get", shown["id"], "--show-key") == 0
    assert details(capsys.readouterr().out)["backup_ingest_url"] == shown["backup_ingest_url"]
