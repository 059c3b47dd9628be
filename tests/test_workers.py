"""WorkerService over a real channel: leases, fencing, long-poll hand-off,
priorities, progress, abort, failure and retry, expiry recovery, file checks."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections import Counter

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2
from google.rpc import code_pb2, status_pb2

from mediajobs.server.app import App
from mediajobs.server.store import events as store_events
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import FakeClock, error_info, field_violations, start_app

Job = res.Job
TIMEOUT = 10


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(int(seconds * 1e6))
    return d


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def wapp(sqlite_path, clock, tmp_path):
    # The lease sweeper runs only when a test calls it (interval far away).
    app = await start_app(sqlite_path, clock=clock, lease_sweep_interval_s=3600, storage_root=tmp_path / "storage")
    try:
        yield app
    finally:
        await app.stop(None)


@pytest.fixture
async def stubs(wapp: App):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{wapp.port}") as ch:
        yield job_service_pb2_grpc.JobServiceStub(ch), worker_service_pb2_grpc.WorkerServiceStub(ch)


def key(worker: str, index: int = 0) -> res.LockKey:
    return res.LockKey(scheduler_id="sched-1", worker_id=worker, batch_index=index)


async def acquire(workers, types=("T",), n=1, lease=30.0, worker="w1", no_wait=True, wait=None):
    req = wsvc.AcquireJobsRequest(job_types=list(types), max_jobs=n, lease_duration=dur(lease), lock_key=key(worker),
                                  identity=f"{worker}@host", no_wait=no_wait)
    if wait is not None:
        req.wait_timeout.CopyFrom(dur(wait))
    return await workers.AcquireJobs(req)


async def test_acquire_leases_exclusively_with_a_token(stubs, clock):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    got = await acquire(workers, lease=20)
    assert len(got.jobs) == 1
    lj = got.jobs[0]
    assert lj.job.id == j.id and lj.job.state == Job.RUNNING and lj.job.attempt_count == 1
    assert lj.lease_token and got.lease_duration.seconds == 20
    assert lj.lease_expire_time.ToMicroseconds() == clock.now + 20_000_000
    assert lj.job.lease.lock_key.worker_id == "w1" and lj.job.lease.identity == "w1@host"
    assert (await acquire(workers)).jobs == [], "no second lease while the first holds"
    shown = await jobs.GetJob(svc.GetJobRequest(id=j.id))
    assert shown.state == Job.RUNNING and shown.start_time.seconds > 0
    assert lj.lease_token not in str(shown), "the token is never shown to others"


async def test_lease_duration_is_capped_and_said(stubs):
    jobs, workers = stubs
    await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    got = await acquire(workers, lease=100_000)
    assert got.lease_duration.seconds == 600


async def test_highest_priority_first_then_oldest_and_updates_reorder(stubs):
    jobs, workers = stubs
    made = {}
    for name, p in [("low", Job.LOW), ("high1", Job.HIGH), ("med", Job.MEDIUM), ("high2", Job.HIGH), ("top", Job.HIGHEST)]:
        made[name] = (await jobs.CreateJob(svc.CreateJobRequest(type="T", priority=p))).id
    await jobs.UpdateJob(svc.UpdateJobRequest(job=Job(id=made["low"], priority=Job.HIGHEST),
                                              update_mask=field_mask_pb2.FieldMask(paths=["priority"])))
    order = [(await acquire(workers)).jobs[0].job.id for _ in range(5)]
    assert order == [made["low"], made["top"], made["high1"], made["high2"], made["med"]]


async def test_long_poll_hands_a_new_job_to_exactly_one_waiter(stubs, wapp: App):
    jobs, workers = stubs
    waiters = [asyncio.create_task(acquire(workers, no_wait=False, wait=30, worker=f"w{i}")) for i in range(10)]
    await asyncio.wait_for(wapp.dispatcher.wait_for_waiting(10), TIMEOUT)
    assert wapp.dispatcher.waiting() == 10
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED, timeout=TIMEOUT)
    assert len(done) == 1
    assert [lj.job.id for t in done for lj in t.result().jobs] == [j.id]
    assert len(pending) == 9 and wapp.dispatcher.waiting() == 9
    more = (await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T")] * 9))).jobs
    results = await asyncio.wait_for(asyncio.gather(*pending), TIMEOUT)
    got = [lj.job.id for r in results for lj in r.jobs]
    assert sorted(got) == sorted(m.id for m in more), "each waiter got exactly one job, none twice"


async def test_long_poll_returns_empty_at_its_wait_timeout(stubs):
    _, workers = stubs
    got = await acquire(workers, no_wait=False, wait=0.2)
    assert not got.jobs


async def test_fencing_a_stalled_worker_cannot_overwrite_the_new_attempt(stubs, clock, wapp: App):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    a = (await acquire(workers, lease=10, worker="A")).jobs[0]
    clock.advance(11)  # A stalls past its lease
    rec = await workers.CleanExpiredLeases(wsvc.CleanExpiredLeasesRequest())
    assert list(rec.retried_job_ids) == [j.id]
    clock.advance(5)  # past the retry backoff
    b = (await acquire(workers, lease=10, worker="B")).jobs[0]
    assert b.job.id == j.id and b.lease_token != a.lease_token and b.job.attempt_count == 2

    for call in (
        workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=a.lease_token, progress=90)),
        workers.CompleteJob(wsvc.CompleteJobRequest(job_id=j.id, lease_token=a.lease_token)),
        workers.FailJob(wsvc.FailJobRequest(job_id=j.id, lease_token=a.lease_token, error=status_pb2.Status(message="x"))),
        workers.ReleaseJob(wsvc.ReleaseJobRequest(job_id=j.id, lease_token=a.lease_token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.ABORTED and error_info(e.value).reason == "LEASE_LOST"

    result = struct_pb2.Struct()
    result.update({"by": "B"})
    done = await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=j.id, lease_token=b.lease_token, result=result))
    assert done.state == Job.SUCCEEDED and done.result["by"] == "B" and done.progress == 100
    # A retried completion of the same attempt is recognised, not doubled.
    again = await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=j.id, lease_token=b.lease_token, result=result))
    assert again.revision == done.revision
    problems = (await jobs.ListJobProblems(svc.ListJobProblemsRequest(job_id=j.id, include_resolved=True))).problems
    assert [p.reason for p in problems] == ["LEASE_EXPIRED"]
    assert "A" in problems[0].details["worker"] and problems[0].details["last_heartbeat"]
    assert problems[0].resolved, "resolved once the job finished"


async def test_expired_lease_is_also_refused_before_any_sweep(stubs, clock):
    jobs, workers = stubs
    await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    a = (await acquire(workers, lease=5)).jobs[0]
    clock.advance(6)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=a.job.id, lease_token=a.lease_token))
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert (await jobs.GetJob(svc.GetJobRequest(id=a.job.id))).state == Job.RUNNING, "nothing was written"


async def test_heartbeat_extends_the_lease_and_reports_monotone_progress(stubs, clock, wapp: App):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    lj = (await acquire(workers, lease=10)).jobs[0]
    watch = jobs.WatchJobs(svc.WatchJobsRequest(job_ids=[j.id], start_revision=lj.job.revision + 1))
    clock.advance(8)
    hb = await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=lj.lease_token, progress=40, message="decoding"))
    assert hb.lease_expire_time.ToMicroseconds() == clock.now + 10_000_000 and not hb.cancel_requested
    ev = (await asyncio.wait_for(watch.read(), TIMEOUT)).events[0]
    assert ev.job.progress == 40 and ev.job.progress_message == "decoding"
    await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=lj.lease_token, progress=30))
    assert (await jobs.GetJob(svc.GetJobRequest(id=j.id))).progress == 40, "progress never goes back"
    clock.advance(8)  # past the original expiry, within the extended one
    await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=lj.lease_token, progress=70))
    ev = (await asyncio.wait_for(watch.read(), TIMEOUT)).events[0]
    assert ev.job.progress == 70
    watch.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=lj.lease_token, progress=101))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "progress" in field_violations(e.value)


async def test_abort_of_a_running_job_reaches_the_worker_and_ends_aborted(stubs, clock, wapp: App):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    lj = (await acquire(workers)).jobs[0]
    assert (await jobs.AbortJob(svc.AbortJobRequest(id=j.id, skip_cleanup=True))).state == Job.ABORTING
    hb = await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=j.id, lease_token=lj.lease_token, progress=10))
    assert hb.cancel_requested and hb.skip_cleanup
    done = await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=j.id, lease_token=lj.lease_token))
    assert done.state == Job.ABORTED and done.end_time.seconds > 0

    # ... or the lease runs out: ABORTING -> ABORTED by the sweep.
    k = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    await acquire(workers, lease=5)
    await jobs.AbortJob(svc.AbortJobRequest(id=k.id))
    clock.advance(6)
    rec = await wapp.recover_leases_once()
    assert rec.aborted == [k.id]
    assert (await jobs.GetJob(svc.GetJobRequest(id=k.id))).state == Job.ABORTED


async def test_fail_retry_and_attempts(stubs, clock):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T", max_attempts=2))
    lj = (await acquire(workers)).jobs[0]
    err = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="storage hiccup")
    back = await workers.FailJob(wsvc.FailJobRequest(job_id=j.id, lease_token=lj.lease_token, error=err, retryable=True,
                                                     retry_delay=dur(30)))
    assert back.state == Job.PENDING and not back.HasField("error")
    assert back.available_time.ToMicroseconds() == clock.now + 30_000_000
    assert not (await acquire(workers)).jobs, "not before the retry delay"
    clock.advance(31)
    lj2 = (await acquire(workers)).jobs[0]
    assert lj2.job.attempt_count == 2
    final = await workers.FailJob(wsvc.FailJobRequest(job_id=j.id, lease_token=lj2.lease_token, error=err, retryable=True))
    assert final.state == Job.FAILED, "no attempts left"
    assert final.error.message == "storage hiccup" and final.error.code == code_pb2.UNAVAILABLE

    k = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    lk = (await acquire(workers)).jobs[0]
    fatal = await workers.FailJob(wsvc.FailJobRequest(job_id=k.id, lease_token=lk.lease_token,
                                                      error=status_pb2.Status(message="corrupt source")))
    assert fatal.state == Job.FAILED and fatal.attempt_count == 1 and fatal.error.code == code_pb2.UNKNOWN
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await workers.FailJob(wsvc.FailJobRequest(job_id=k.id, lease_token=lk.lease_token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_expiry_uses_up_attempts_then_fails(stubs, clock, wapp: App):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T", max_attempts=2))
    for attempt in (1, 2):
        lj = (await acquire(workers, lease=5)).jobs[0]
        assert lj.job.attempt_count == attempt
        clock.advance(6)
        await wapp.recover_leases_once()
        clock.advance(10)
    job = await jobs.GetJob(svc.GetJobRequest(id=j.id))
    assert job.state == Job.FAILED and job.error.code == code_pb2.DEADLINE_EXCEEDED
    assert "attempt 2 of 2" in job.error.message


async def test_release_with_and_without_reset(stubs, clock):
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    lj = (await acquire(workers)).jobs[0]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await workers.ReleaseJob(wsvc.ReleaseJobRequest(job_id=j.id, lease_token=lj.lease_token, job_type="OTHER"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    back = await workers.ReleaseJob(wsvc.ReleaseJobRequest(job_id=j.id, lease_token=lj.lease_token, job_type="T"))
    # A graceful release gives the attempt back.
    assert back.state == Job.PENDING and back.attempt_count == 0
    lj = (await acquire(workers)).jobs[0]
    assert lj.job.attempt_count == 1
    await workers.FailJob(wsvc.FailJobRequest(job_id=j.id, lease_token=lj.lease_token, retryable=True,
                                              error=status_pb2.Status(message="flaky")))
    clock.advance(600)  # past the retry backoff
    lj = (await acquire(workers)).jobs[0]
    assert lj.job.attempt_count == 2
    back = await workers.ReleaseJob(wsvc.ReleaseJobRequest(job_id=j.id, lease_token=lj.lease_token,
                                                           reset_execution_attempts=True))
    assert back.attempt_count == 0


async def test_releases_never_push_attempt_count_past_max_attempts(stubs, clock):
    """Leasing and releasing without a reset, many times over: the job stays
    leasable and attempt_count stays within max_attempts (the soak that once
    leased jobs 312 times past their limit)."""
    jobs, workers = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T", max_attempts=2))
    seen = []
    for _ in range(10):
        lj = (await acquire(workers)).jobs[0]
        seen.append(lj.job.attempt_count)
        back = await workers.ReleaseJob(wsvc.ReleaseJobRequest(job_id=j.id, lease_token=lj.lease_token))
        seen.append(back.attempt_count)
    assert max(seen) <= 2 and seen[-2:] == [1, 0]
    # Two real failures use the two attempts up: the second is final.
    for attempt in (1, 2):
        lj = (await acquire(workers)).jobs[0]
        assert lj.job.attempt_count == attempt
        out = await workers.FailJob(wsvc.FailJobRequest(job_id=j.id, lease_token=lj.lease_token, retryable=True,
                                                        error=status_pb2.Status(message="boom")))
        clock.advance(600)
    assert out.state == Job.FAILED and out.attempt_count == 2 == out.max_attempts


async def test_complete_jobs_in_batches_reports_each_item(stubs):
    jobs, workers = stubs
    await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T")] * 5))
    leased = (await acquire(workers, n=5)).jobs
    items = [wsvc.CompleteJobRequest(job_id=lj.job.id, lease_token=lj.lease_token) for lj in leased]
    items[2].lease_token = "0" * 32
    resp = await workers.CompleteJobs(wsvc.CompleteJobsRequest(completions=items))
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["job", "job", "error", "job", "job"]
    assert resp.results[2].error.code == grpc.StatusCode.ABORTED.value[0]
    assert all(r.job.state == Job.SUCCEEDED for i, r in enumerate(resp.results) if i != 2)


async def test_twenty_workers_two_thousand_jobs_each_run_exactly_once(stubs, wapp: App):
    jobs, workers = stubs
    for _ in range(2):
        await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T")] * 1000))
    completed: Counter[str] = Counter()
    holders: dict[str, str] = {}
    overlaps: list[str] = []

    async def worker(name: str) -> None:
        while True:
            got = await acquire(workers, n=10, worker=name)
            if not got.jobs:
                return
            for lj in got.jobs:
                if lj.job.id in holders:
                    overlaps.append(lj.job.id)
                holders[lj.job.id] = name
            await asyncio.sleep(0)  # let other workers interleave
            resp = await workers.CompleteJobs(wsvc.CompleteJobsRequest(
                completions=[wsvc.CompleteJobRequest(job_id=lj.job.id, lease_token=lj.lease_token) for lj in got.jobs]))
            for lj, r in zip(got.jobs, resp.results):
                assert r.WhichOneof("result") == "job", r
                completed[lj.job.id] += 1
                del holders[lj.job.id]

    await asyncio.gather(*[worker(f"w{i}") for i in range(20)])
    assert not overlaps, "no job was ever held by two leases"
    assert len(completed) == 2000 and set(completed.values()) == {1}
    listed = await jobs.ListJobs(svc.ListJobsRequest(states=[Job.SUCCEEDED], page_size=1))
    assert listed.total_size == 2000
    # The log agrees: each job went RUNNING once and SUCCEEDED once.
    rows, _ = await wapp.store.read(store_events.read_events, 1, 10**9, 100_000)
    trans = Counter((ev.state, ev.job_id) for ev in rows)
    assert all(trans[(Job.RUNNING, j)] == 1 and trans[(Job.SUCCEEDED, j)] == 1 for j in completed)


async def test_check_file_exists_only_inside_the_storage_root(stubs, wapp: App, tmp_path):
    _, workers = stubs
    root = wapp.cfg.storage_dir()
    (root / "media").mkdir()
    (root / "media" / "a.mp4").write_bytes(b"x" * 1234)
    (root / "link-inside").symlink_to(root / "media" / "a.mp4")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "escape").symlink_to(outside)
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "rel-escape").symlink_to("../secret.txt")

    async def check(path: str, size: int = 0, any_size: bool = False) -> wsvc.CheckFileExistsResponse:
        return await workers.CheckFileExists(wsvc.CheckFileExistsRequest(local_path=path, size=size, any_size=any_size))

    ok = await check("media/a.mp4", 1234)
    assert ok.exists and ok.size_matches and ok.actual_size == 1234
    wrong = await check("media/a.mp4", 99)
    assert wrong.exists and not wrong.size_matches
    assert (await check("link-inside", any_size=True)).size_matches
    assert not (await check("media/none.mp4")).exists
    assert not (await check("media", any_size=True)).exists, "a folder is not a file"
    for bad in ("../secret.txt", "media/../../secret.txt", "/etc/passwd", str(outside), "", "a" * 5000, "d/" + "b" * 300):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await check(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    for bad in ("escape", "escape-dir/secret.txt", "rel-escape"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await check(bad)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, bad
        assert error_info(e.value).reason == "PATH_OUTSIDE_STORAGE_ROOT"


async def test_acquire_rejects_bad_requests(stubs):
    _, workers = stubs
    for req in (wsvc.AcquireJobsRequest(), wsvc.AcquireJobsRequest(job_types=["bad type"]),
                wsvc.AcquireJobsRequest(job_types=["T"], max_jobs=1000)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await workers.AcquireJobs(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, grpc
    from google.protobuf import duration_pb2
    from mediajobs.v1 import worker_service_pb2 as w, worker_service_pb2_grpc as g
    stub = g.WorkerServiceStub(grpc.insecure_channel(sys.argv[1]))
    d = duration_pb2.Duration(seconds=2)
    got = stub.AcquireJobs(w.AcquireJobsRequest(job_types=["KILL"], max_jobs=5, lease_duration=d, no_wait=True))
    print(" ".join(j.job.id for j in got.jobs), flush=True)
    sys.stdin.read()  # hold the leases until killed
    """
)


async def test_kill_9_of_a_worker_frees_its_jobs_within_lease_plus_sweep(sqlite_path, tmp_path):
    app = await start_app(sqlite_path, lease_sweep_interval_s=0.2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
            made = (await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="KILL")] * 5))).jobs
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER_SCRIPT, f"127.0.0.1:{app.port}",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ),
            )
            assert proc.stdout is not None
            held = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
            assert sorted(held) == sorted(j.id for j in made)
            proc.kill()
            await proc.wait()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            regained: list[str] = []
            while len(regained) < 5 and loop.time() - t0 < 10:
                got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["KILL"], max_jobs=5, wait_timeout=dur(5)))
                regained += [lj.job.id for lj in got.jobs]
            elapsed = loop.time() - t0
            assert sorted(regained) == sorted(held)
            # within lease (2 s) + sweep interval (0.2 s); slack for a loaded 2-core machine
            assert elapsed < 2 + 0.2 + 1.5, elapsed
            problems = (await jobs.ListJobProblems(svc.ListJobProblemsRequest())).problems
            assert {p.job_id for p in problems} == set(held)
    finally:
        await app.stop(None)



async def test_leases_committed_for_a_cancelled_acquire_go_back_to_the_queue(stubs, wapp: App):
    """The caller of AcquireJobs goes away while its leases are being
    committed: the jobs return to PENDING at once, the attempt not counted."""
    import threading

    from mediajobs.server.services.workers import WorkerService

    jobs, _ = stubs
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    service = WorkerService(wapp.store, wapp.dispatcher, wapp.cfg.storage_dir())
    gate = threading.Event()
    blocker = wapp.store.submit(lambda tx: gate.wait(TIMEOUT))  # holds the writer
    task = asyncio.create_task(service._acquire_once(["T"], 1, 10**7, res.LockKey(), "w"))
    await asyncio.sleep(0)  # the task queues its write behind the blocker and parks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await blocker
    await wapp.store.write(lambda tx: None)  # every earlier batch has committed and called back
    await asyncio.gather(*list(service._background))
    back = await jobs.GetJob(svc.GetJobRequest(id=j.id))
    assert back.state == Job.PENDING and back.attempt_count == 0
