"""Several server processes on one PostgreSQL database: WatchJobs on any of
them returns every event in revision order, with no gap and no repeat, and
no bookmark passes an event the watcher has not received.

Each server here is a real grpc.aio server with its own store, writer and
watch hub (as a separate process would have), talking to the same fresh
PostgreSQL schema over real channels."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc
import pytest

from mediajobs.server import watch
from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import FakeClock, error_info, fresh_pg_url, start_app
from test_watch import Stream, create, interval, set_priority

Job = res.Job


class Server:
    def __init__(self, app: App, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.channel = channel
        self.stub = job_service_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
def no_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other servers' events reach a hub only through its own next commit
    (the log tail, if the app runs one, never wakes up during the test)."""
    monkeypatch.setattr(watch, "TAIL_INTERVAL", 3600.0)


async def _start_pair(clock: FakeClock | None = None, **cfg: object) -> tuple[Server, Server]:
    url = fresh_pg_url()
    out = []
    for _ in range(2):
        app = await start_app(url, clock, **cfg)
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        out.append(Server(app, ch))
    return out[0], out[1]


async def _stop_pair(servers: tuple[Server, Server]) -> None:
    for s in servers:
        await s.channel.close()
        await s.app.stop(None)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Server, Server]]:
    servers = await _start_pair()
    try:
        yield servers
    finally:
        await _stop_pair(servers)


@pytest.fixture
async def quiet_pair(no_tail: None) -> AsyncIterator[tuple[Server, Server]]:
    """Two servers whose hubs learn of each other's commits only through
    their own next commit (or a watch asking for a newer revision)."""
    servers = await _start_pair()
    try:
        yield servers
    finally:
        await _stop_pair(servers)


async def _interleave(a: Server, b: Server, rounds: int) -> list[int]:
    """Writes through both servers, alternating, each touching the other's
    jobs too; returns the revision of every write."""
    revs: list[int] = []
    for i in range(rounds):
        ja = await create(a.stub, "A")
        jb = await create(b.stub, "B")
        ub = await set_priority(a.stub, jb.id, Job.HIGH)
        ua = await set_priority(b.stub, ja.id, Job.LOW)
        revs += [ja.revision, jb.revision, ub.revision, ua.revision]
    return revs


class Recorder:
    """Every message of a stream, to check ordering and bookmarks."""

    def __init__(self, stream: Stream, after: int) -> None:
        self.stream = stream
        self.after = after  # the stream covers revisions after this one
        self.received: list[int] = []
        self.checked_bookmarks = 0

    async def until(self, revision: int) -> None:
        """Read messages until an event at `revision` has arrived, checking
        that no progress bookmark passes an event not received yet (every
        revision is a matching event in these tests)."""
        while not self.received or self.received[-1] < revision:
            msg = await self.stream.next()
            if msg.HasField("progress"):
                self.check_bookmark(msg.revision)
            else:
                self.received += [e.revision for e in msg.events]
                assert msg.revision == msg.events[-1].revision

    def check_bookmark(self, revision: int) -> None:
        missing = set(range(self.after + 1, revision + 1)) - set(self.received)
        assert not missing, f"bookmark {revision} passes events not received: {sorted(missing)[:10]}"
        self.checked_bookmarks += 1

    def assert_exact(self, last: int) -> None:
        assert self.received == list(range(self.after + 1, last + 1)), "every event once, in order"


async def _resume(server: Server, start: int, upto: int) -> list[int]:
    s = Stream(server.stub, svc.WatchJobsRequest(start_revision=start))
    rec = Recorder(s, start - 1)
    await rec.until(upto)
    await s.close()
    return rec.received


async def test_resume_on_either_server_returns_every_event_once(quiet_pair):
    a, b = quiet_pair
    revs = await _interleave(a, b, 25)
    end = max(revs)
    assert sorted(revs) == list(range(1, end + 1)), "revisions are dense across the two servers"
    # b wrote last: a has seen everything up to its own last change (it
    # read b's earlier ones from the log), but not b's last one.
    a_last = end - 1
    assert a_last in revs[2::4]  # a's own UpdateJob, the last write through a
    assert a.app.hub.revision < end
    for server, upto in ((a, a_last), (b, end)):
        for start in (1, end // 2):
            got = await _resume(server, start, upto)
            assert got == list(range(start, upto + 1)), f"resume from {start} on port {server.app.port}"
    # a's next own commit shows a gap: a resume there gets b's events, then it.
    s = Stream(a.stub, svc.WatchJobsRequest(start_revision=end // 2))
    rec = Recorder(s, end // 2 - 1)
    await rec.until(a_last)
    j = await create(a.stub, "A")
    await rec.until(j.revision)
    rec.assert_exact(j.revision)
    await s.close()


async def test_live_watcher_gets_other_servers_events_in_order(quiet_pair):
    a, b = quiet_pair
    base = (await create(a.stub, "A")).revision
    s = Stream(a.stub, svc.WatchJobsRequest(progress_interval=interval(0.1)))
    first = await s.next()
    assert first.HasField("progress") and first.revision == base
    rec = Recorder(s, base)
    await a.app.hub.wait_for_watchers(1)
    theirs = [(await create(b.stub, "B")).revision for _ in range(5)]
    # a has not seen them: its bookmarks must stay below them, however many pass.
    for _ in range(3):
        msg = await s.next()
        assert msg.HasField("progress") and not msg.events
        assert msg.revision < theirs[0]
        rec.check_bookmark(msg.revision)
    mine = await create(a.stub, "A")
    await rec.until(mine.revision)
    assert rec.received == theirs + [mine.revision], "b's changes first, then a's, none skipped"
    revs = await _interleave(a, b, 20)
    last = (await create(a.stub, "A")).revision
    await rec.until(last)
    rec.assert_exact(last)
    assert sorted(revs)[-1] < last
    # After the last event, bookmarks cover it and go no further than a has seen.
    msg = await s.next()
    assert msg.HasField("progress") and msg.revision == last
    await s.close()


async def test_log_tail_delivers_other_servers_events_live(pair):
    a, b = pair
    tail = asyncio.create_task(watch.tail_log(a.app.hub, 0.05))
    try:
        base = (await create(a.stub, "A")).revision
        s = Stream(a.stub, svc.WatchJobsRequest(progress_interval=interval(0.1)))
        assert (await s.next()).revision == base
        rec = Recorder(s, base)
        theirs = [(await create(b.stub, "B")).revision for _ in range(30)]
        await rec.until(theirs[-1])  # no commit through a: the tail brings them
        rec.assert_exact(theirs[-1])
        revs = await _interleave(a, b, 10)
        await rec.until(max(revs))
        rec.assert_exact(max(revs))
        while True:  # bookmarks reach the end, never past it
            msg = await s.next()
            assert msg.HasField("progress")
            rec.check_bookmark(msg.revision)
            if msg.revision == max(revs):
                break
        assert rec.checked_bookmarks >= 1
        await s.close()
        # A resume on a from the middle of b's events is complete too.
        got = await _resume(a, theirs[10], max(revs))
        assert got == list(range(theirs[10], max(revs) + 1))
    finally:
        tail.cancel()


async def test_start_revision_reached_only_by_the_other_server_is_accepted(quiet_pair):
    a, b = quiet_pair
    await create(a.stub, "A")
    theirs = [(await create(b.stub, "B")).revision for _ in range(3)]
    assert a.app.hub.revision < theirs[0]
    s = Stream(a.stub, svc.WatchJobsRequest(start_revision=theirs[-1]))
    ev = await s.next_event()
    assert ev.revision == theirs[-1] and ev.job.type == "B"
    await s.close()
    s = Stream(a.stub, svc.WatchJobsRequest(start_revision=theirs[-1] + 1, progress_interval=interval(0.1)))
    msg = await s.next()
    assert msg.HasField("progress") and msg.revision == theirs[-1]
    await s.close()
    s = Stream(a.stub, svc.WatchJobsRequest(start_revision=theirs[-1] + 2))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.next()
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    info = error_info(e.value)
    assert info.reason == "REVISION_IN_FUTURE" and info.metadata["current_revision"] == str(theirs[-1])


async def test_gap_compacted_before_it_was_read_fails_the_watch_instead_of_skipping(no_tail):
    clock = FakeClock()
    servers = await _start_pair(clock=clock, event_retention_s=60)
    a, b = servers
    try:
        base = (await create(a.stub, "A")).revision
        s = Stream(a.stub, svc.WatchJobsRequest())
        assert (await s.next()).revision == base
        await a.app.hub.wait_for_watchers(1)
        theirs = [(await create(b.stub, "B")).revision for _ in range(3)]
        clock.advance(120)
        await create(b.stub, "B")  # recent: kept
        await b.app.sweep_once()  # compacts b's first three (and a's first) before a has read them
        await create(a.stub, "A")  # a sees the gap, and finds part of it compacted
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.next()
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        info = error_info(e.value)
        assert info.reason == "REVISION_COMPACTED" and info.metadata["start_revision"] == str(theirs[0])
    finally:
        await _stop_pair(servers)
