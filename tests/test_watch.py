"""WatchJobs: live tail, filters, snapshot, progress, resume after disconnect
and restart with no gap and no repeat, compaction, slow consumers, cancel."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from mediajobs.server import watch
from mediajobs.server.app import App
from mediajobs.server.store import jobs as store_jobs
from mediajobs.server.store import leases as store_leases
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import FakeClock, error_info, start_app

Job = res.Job
TIMEOUT = 10


class Stream:
    """A WatchJobs call piped into a queue by a background task."""

    def __init__(self, stub: job_service_pb2_grpc.JobServiceStub, req: svc.WatchJobsRequest) -> None:
        self.call = stub.WatchJobs(req)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.pending: list[res.JobEvent] = []
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for msg in self.call:
                await self.queue.put(msg)
        except grpc.aio.AioRpcError as e:
            await self.queue.put(e)
        except asyncio.CancelledError:
            pass

    async def next(self) -> svc.WatchJobsResponse:
        msg = await asyncio.wait_for(self.queue.get(), TIMEOUT)
        if isinstance(msg, Exception):
            raise msg
        return msg

    async def next_event(self) -> res.JobEvent:
        """The next event, whether it came alone or in a batch."""
        while not self.pending:
            msg = await self.next()
            if msg.events:
                assert msg.revision == msg.events[-1].revision
                assert [e.revision for e in msg.events] == sorted(e.revision for e in msg.events)
                self.pending.extend(msg.events)
        return self.pending.pop(0)

    async def events(self, n: int) -> list[res.JobEvent]:
        return [await self.next_event() for _ in range(n)]

    async def close(self) -> None:
        self.call.cancel()
        await self.task


def interval(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(int(seconds * 1e6))
    return d


async def create(stub, type_="T", **kw) -> Job:
    return await stub.CreateJob(svc.CreateJobRequest(type=type_, **kw))


async def set_priority(stub, job_id: str, p: int) -> Job:
    return await stub.UpdateJob(
        svc.UpdateJobRequest(job=Job(id=job_id, priority=p), update_mask=field_mask_pb2.FieldMask(paths=["priority"]))
    )


async def test_live_tail_from_now(jobs, app: App):
    s = Stream(jobs, svc.WatchJobsRequest())
    await app.hub.wait_for_watchers(1)
    j = await create(jobs)
    ev = await s.next_event()
    assert ev.type == res.JobEvent.CREATED and ev.job.id == j.id and ev.revision == j.revision
    assert ev.previous_state == Job.STATE_UNSPECIFIED
    upd = await set_priority(jobs, j.id, Job.HIGH)
    ev = await s.next_event()
    assert ev.type == res.JobEvent.UPDATED and ev.revision == upd.revision == j.revision + 1
    assert ev.job.priority == Job.HIGH
    ab = await jobs.AbortJob(svc.AbortJobRequest(id=j.id))
    ev = await s.next_event()
    assert ev.job.state == Job.ABORTED and ev.previous_state == Job.PENDING and ev.revision == ab.revision
    await jobs.DeleteJobs(svc.DeleteJobsRequest(ids=[j.id]))
    ev = await s.next_event()
    assert ev.type == res.JobEvent.DELETED and ev.job.id == j.id
    await s.close()


async def test_filters(jobs, app: App):
    a = await create(jobs, "TRANSCODE")
    b = await create(jobs, "THUMBNAIL")
    by_id = Stream(jobs, svc.WatchJobsRequest(job_ids=[a.id]))
    by_type = Stream(jobs, svc.WatchJobsRequest(types=["THUMBNAIL"]))
    by_state = Stream(jobs, svc.WatchJobsRequest(states=[Job.ABORTED]))
    await app.hub.wait_for_watchers(3)
    await set_priority(jobs, b.id, Job.LOW)
    await set_priority(jobs, a.id, Job.LOW)
    await jobs.AbortJob(svc.AbortJobRequest(id=b.id))
    c = await create(jobs, "THUMBNAIL")
    ev = await by_id.next_event()
    assert ev.job.id == a.id and ev.job.priority == Job.LOW
    got = await by_type.events(3)
    assert [(e.job.id, e.type) for e in got] == [
        (b.id, res.JobEvent.UPDATED), (b.id, res.JobEvent.UPDATED), (c.id, res.JobEvent.CREATED)
    ]
    ev = await by_state.next_event()
    assert ev.job.id == b.id and ev.job.state == Job.ABORTED
    # Leaving a watched state is seen too (previous_state matches).
    r = await create(jobs, "X")
    await app.store.write(lambda tx: store_leases.lease_job(tx, r.id, 10**7, res.LockKey(), "w"))
    running = Stream(jobs, svc.WatchJobsRequest(states=[Job.RUNNING]))
    await app.hub.wait_for_watchers(4)
    await jobs.AbortJob(svc.AbortJobRequest(id=r.id))
    ev = await running.next_event()
    assert ev.job.state == Job.ABORTING and ev.previous_state == Job.RUNNING
    for s in (by_id, by_type, by_state, running):
        await s.close()


async def test_snapshot_then_live(jobs, app: App):
    olds = [await create(jobs, "SNAP") for _ in range(3)]
    await create(jobs, "OTHER")
    s = Stream(jobs, svc.WatchJobsRequest(types=["SNAP"], send_initial_snapshot=True))
    snap = await s.events(3)
    assert [e.job.id for e in snap] == [j.id for j in olds]
    assert all(e.type == res.JobEvent.SNAPSHOT for e in snap)
    done = await s.next()
    assert done.HasField("progress") and done.progress.snapshot_complete
    new = await create(jobs, "SNAP")
    ev = await s.next_event()
    assert ev.job.id == new.id and ev.type == res.JobEvent.CREATED and ev.revision > done.revision
    await s.close()


async def test_idle_stream_gets_progress_bookmarks(jobs, app: App):
    j = await create(jobs)
    s = Stream(jobs, svc.WatchJobsRequest(types=["NOTHING"], progress_interval=interval(0.1)))
    msg = await s.next()
    assert msg.HasField("progress") and not msg.progress.snapshot_complete
    assert msg.revision == j.revision
    k = await create(jobs)  # not matching: the bookmark still advances
    while True:
        msg = await s.next()
        assert msg.HasField("progress")
        if msg.revision == k.revision:
            break
    await s.close()


async def test_watch_rejects_bad_requests(jobs):
    for req in (
        svc.WatchJobsRequest(start_revision=-1),
        svc.WatchJobsRequest(progress_interval=interval(0.001)),
        svc.WatchJobsRequest(job_ids=["not-an-id"]),
        svc.WatchJobsRequest(start_revision=3, send_initial_snapshot=True),
    ):
        s = Stream(jobs, req)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.next()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _all_events(stub, start: int, end: int) -> list[res.JobEvent]:
    s = Stream(stub, svc.WatchJobsRequest(start_revision=start))
    out = []
    while not out or out[-1].revision < end:
        out.append(await s.next_event())
    await s.close()
    return out


async def test_resume_after_disconnect_and_restart_gets_every_event_once(db_url):
    """500 changes, a disconnect and a server restart in between: resuming
    with last+1 yields exactly the missed events, in order."""
    app = await start_app(db_url)
    port = app.port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            s = Stream(stub, svc.WatchJobsRequest())
            await app.hub.wait_for_watchers(1)
            made = [await create(stub) for _ in range(100)]
            seen = await s.events(100)
            assert [e.job.id for e in seen] == [j.id for j in made]
            await s.close()
            last = seen[-1].revision
            # 200 changes while disconnected, before the restart
            for j in made:
                await set_priority(stub, j.id, Job.HIGH)
            for j in made[:100]:
                await jobs_abort(stub, j.id)
        await app.stop(None)
        app = await _restart(db_url, port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            more = [await create(stub) for _ in range(100)]
            for j in more:
                end = (await set_priority(stub, j.id, Job.LOWEST)).revision
            resumed = await _all_events(stub, last + 1, end)
    finally:
        await app.stop(None)
    revs = [e.revision for e in resumed]
    assert revs == list(range(last + 1, end + 1)), "every revision exactly once, in order"
    assert len(resumed) == 400
    assert [e.type for e in resumed[200:300]] == [res.JobEvent.CREATED] * 100
    assert [e.job.id for e in resumed[200:300]] == [j.id for j in more]
    assert [e.job.priority for e in resumed[300:]] == [Job.LOWEST] * 100


async def jobs_abort(stub, job_id: str) -> Job:
    return await stub.AbortJob(svc.AbortJobRequest(id=job_id))


async def _restart(db: str, port: int) -> App:
    from mediajobs.server.app import build_server
    from mediajobs.server.config import Config

    app = await build_server(Config(listen=f"127.0.0.1:{port}", db=db))
    await app.start()
    return app


async def test_compacted_revision_is_out_of_range(sqlite_path):
    clock = FakeClock()
    app = await start_app(sqlite_path, clock=clock, event_retention_s=60)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            old = [await create(stub) for _ in range(5)]
            clock.advance(120)
            new = await create(stub)
            await app.sweep_once()
            s = Stream(stub, svc.WatchJobsRequest(start_revision=old[0].revision))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await s.next()
            assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
            info = error_info(e.value)
            assert info.reason == "REVISION_COMPACTED"
            assert info.metadata["oldest_revision"] == str(new.revision)
            # The oldest retained revision still works.
            ok = Stream(stub, svc.WatchJobsRequest(start_revision=new.revision))
            assert (await ok.next_event()).job.id == new.id
            await ok.close()
    finally:
        await app.stop(None)


async def test_slow_consumer_catches_up_from_the_log(jobs, app: App, monkeypatch):
    monkeypatch.setattr(watch, "QUEUE_LIMIT", 5)
    s = Stream(jobs, svc.WatchJobsRequest())
    await app.hub.wait_for_watchers(1)
    (w,) = app.hub._all
    first = await create(jobs)

    def many(tx):  # one commit, 60 events: more than the watcher's queue holds
        return [store_jobs.new_job(tx, svc.CreateJobRequest(type="BULK")) for _ in range(60)]

    made = await app.store.write(many)
    got = await s.events(61)
    assert w.desyncs >= 1, "the watcher overflowed and fell back to the log"
    assert [e.revision for e in got] == list(range(first.revision, made[-1].revision + 1))
    assert [e.job.id for e in got[1:]] == [j.id for j in made]
    after = await create(jobs)
    assert (await s.next_event()).job.id == after.id, "live delivery resumes after catching up"
    await s.close()


async def test_cancel_frees_the_subscription(jobs, app: App):
    streams = [Stream(jobs, svc.WatchJobsRequest(job_ids=["01ARZ3NDEKTSV4RRFFQ69G5FAV"])) for _ in range(5)]
    await asyncio.wait_for(app.hub.wait_for_watchers(5), TIMEOUT)
    for s in streams:
        await s.close()
    await asyncio.wait_for(app.hub.wait_for_watchers(0), TIMEOUT)
    assert not app.hub._by_job and not app.hub._all


async def test_list_then_watch_leaves_no_gap(jobs, app: App):
    a = await create(jobs)
    listed = await jobs.ListJobs(svc.ListJobsRequest())
    assert listed.revision == a.revision
    b = await create(jobs)
    s = Stream(jobs, svc.WatchJobsRequest(start_revision=listed.revision + 1))
    ev = await s.next_event()
    assert ev.job.id == b.id
    await s.close()


async def test_draining_server_ends_watches_with_unavailable_and_resume_point(sqlite_path):
    app = await start_app(sqlite_path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        j = await create(stub)
        s = Stream(stub, svc.WatchJobsRequest(start_revision=j.revision))
        assert (await s.next_event()).job.id == j.id
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stopping = asyncio.create_task(app.stop(30))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.next()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(e.value)
        assert info.reason == "SERVER_SHUTTING_DOWN" and info.metadata["resume_revision"] == str(j.revision + 1)
        await stopping
        assert loop.time() - t0 < 10, "open watches do not hold the drain for the whole grace period"


async def test_events_that_queue_up_go_out_together(jobs, app: App):
    s = Stream(jobs, svc.WatchJobsRequest())
    first = await s.next()
    assert first.HasField("progress"), "a from-now stream says where now is"
    made = await app.store.write(lambda tx: [store_jobs.new_job(tx, svc.CreateJobRequest(type="B")) for _ in range(50)])
    msg = await s.next()
    assert [e.job.id for e in msg.events] == [j.id for j in made], "one commit, one message"
    assert msg.revision == made[-1].revision
    await s.close()


async def test_restarted_server_serves_recent_history_from_memory(sqlite_path):
    app = await start_app(sqlite_path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        made = [await create(job_service_pb2_grpc.JobServiceStub(ch)) for _ in range(20)]
    port = app.port
    await app.stop(None)
    app = await _restart(sqlite_path, port)
    try:
        assert [e.revision for e in app.hub.buffer] == [j.revision for j in made]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            got = await _all_events(job_service_pb2_grpc.JobServiceStub(ch), made[5].revision, made[-1].revision)
        assert [e.job.id for e in got] == [j.id for j in made[5:]]
    finally:
        await app.stop(None)


async def test_shutdown_hint_counts_bookmarks(sqlite_path):
    app = await start_app(sqlite_path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        s = Stream(stub, svc.WatchJobsRequest(types=["NONE"], progress_interval=interval(0.1)))
        await s.next()  # where "now" was
        j = await create(stub)
        while (await s.next()).revision < j.revision:
            pass  # bookmarks until one covers j's revision
        stopping = asyncio.create_task(app.stop(5))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.next()
        await stopping
        assert error_info(e.value).metadata["resume_revision"] == str(j.revision + 1)


async def test_messages_stay_under_a_mebibyte_of_events(sqlite_path, monkeypatch):
    """Big events (~700 KB each): from the log and from the live queue, a
    message carries at most MAX_MESSAGE_BYTES of events, or one event, so
    every message fits the client's default 4 MiB receive limit."""
    monkeypatch.setattr(watch, "BUFFER_SIZE", 2)  # a resume reads the log, not the buffer
    app = await start_app(sqlite_path)
    blob = "x" * 700_000

    def big(tx):  # one commit: the live watcher gets them all queued at once
        return [store_jobs.new_job(tx, svc.CreateJobRequest(type="BIG", params={"blob": blob})) for _ in range(6)]

    def check(msgs: list[svc.WatchJobsResponse]) -> list[int]:
        for m in msgs:
            sizes = [e.ByteSize() for e in m.events]
            assert len(sizes) == 1 or sum(sizes) <= watch.MAX_MESSAGE_BYTES, f"{len(sizes)} events, {sum(sizes)} bytes"
        return [e.revision for m in msgs for e in m.events]

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            live = Stream(stub, svc.WatchJobsRequest())
            assert (await live.next()).HasField("progress")
            await app.hub.wait_for_watchers(1)
            made = await app.store.write(big)
            revs = [j.revision for j in made]
            got: list[svc.WatchJobsResponse] = []
            while not got or got[-1].revision < revs[-1]:
                got.append(await live.next())
            assert check(got) == revs and len(got) == 6
            await live.close()
            resumed = Stream(stub, svc.WatchJobsRequest(start_revision=revs[0]))
            got = []
            while not got or got[-1].revision < revs[-1]:
                got.append(await resumed.next())
            assert check(got) == revs and len(got) == 6
            await resumed.close()
    finally:
        await app.stop(None)


async def test_single_server_never_reads_gaps_from_the_log(db_url, monkeypatch):
    """One server per database: every commit follows the last one, so the
    hub never holds events back nor reads the log for other processes."""
    # (A log tail could read the database's revision between one of our own
    # commits and its publish, and fetch it from the log: harmless, but not
    # what this test looks at.)
    monkeypatch.setattr(watch, "TAIL_INTERVAL", 3600.0)
    app = await start_app(db_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            s = Stream(stub, svc.WatchJobsRequest(progress_interval=interval(0.1)))
            start = (await s.next()).revision
            made = [await create(stub) for _ in range(20)]
            made += await app.store.write(
                lambda tx: [store_jobs.new_job(tx, svc.CreateJobRequest(type="B")) for _ in range(30)]
            )
            got = await s.events(50)
            assert [e.revision for e in got] == list(range(start + 1, start + 51))
            resumed = await _all_events(stub, start + 1, made[-1].revision)
            assert [e.job.id for e in resumed] == [j.id for j in made]
            assert app.hub._fill_task is None and not app.hub._pending
            assert app.hub.known == app.hub.revision == made[-1].revision
            await s.close()
    finally:
        await app.stop(None)
