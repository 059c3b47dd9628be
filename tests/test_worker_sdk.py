"""The worker SDK (mediajobs.client.Worker) and `mediajobs worker` against a
real in-process server: exactly-once runs across workers, progress,
abort, retry and failure, graceful stop, a server restart, and the CLI.

The server runs on the test's event loop; async workers run on the same loop
(`asyncio.create_task(worker.run())`), the sync API (`run_sync`) in a thread.
Nothing waits by sleeping: tests wait on watch streams, events and futures.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import textwrap
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from mediajobs.client import Backoff, JobCancelled, JobContext, MediaJobsError, RetryableError, Worker
from mediajobs.client.cli import main as cli_main
from mediajobs.server.app import App, build_server
from mediajobs.server.config import Config
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import start_app

Job = res.Job
TIMEOUT = 10
FAST = Backoff(initial=0.05, maximum=0.5)
TERMINAL = (Job.SUCCEEDED, Job.FAILED, Job.ABORTED)


@pytest.fixture
async def wapp(sqlite_path: str) -> AsyncIterator[App]:
    app = await start_app(sqlite_path)  # real clock: the SDK's timers are real
    try:
        yield app
    finally:
        await app.stop(None)


@pytest.fixture
async def jobs(wapp: App) -> AsyncIterator[job_service_pb2_grpc.JobServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{wapp.port}") as ch:
        yield job_service_pb2_grpc.JobServiceStub(ch)


def target(app: App) -> str:
    return f"127.0.0.1:{app.port}"


@contextlib.asynccontextmanager
async def running(*workers: Worker, **run_kw: Any) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run workers on this loop; stop them at once (releasing held jobs) on exit."""
    tasks = [asyncio.create_task(w.run(handle_signals=False, **run_kw)) for w in workers]
    try:
        yield tasks
    finally:
        for w in workers:
            w.stop(0)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


async def revision(jobs: Any) -> int:
    return (await jobs.ListJobs(svc.ListJobsRequest(page_size=1))).revision


async def create(jobs: Any, *reqs: svc.CreateJobRequest) -> list[Job]:
    return list((await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=list(reqs)))).jobs)


def req(job_type: str, **params: Any) -> svc.CreateJobRequest:
    r = svc.CreateJobRequest(type=job_type)
    if params:
        r.params.update(params)
    return r


async def history(
    jobs: Any, start_rev: int, ids: set[str], *, until: Callable[[Job], bool] = lambda j: j.state in TERMINAL,
    on_event: Callable[[Job], None] | None = None, timeout: float = TIMEOUT, types: list[str] | None = None,
) -> dict[str, list[Job]]:
    """Every change of the jobs `ids` after their creation, from revision
    start_rev + 1 (so nothing is missed however fast the jobs ran), until each
    satisfies `until`."""
    request = svc.WatchJobsRequest(start_revision=start_rev + 1)
    if types:
        request.types.extend(types)
    else:
        request.job_ids.extend(sorted(ids))
    out: dict[str, list[Job]] = defaultdict(list)
    left = set(ids)
    call = jobs.WatchJobs(request)

    async def consume() -> None:
        async for msg in call:
            for ev in msg.events:
                if ev.job.id not in ids or ev.type == res.JobEvent.CREATED:
                    continue
                job = ev.job
                out[job.id].append(job)
                if on_event is not None:
                    on_event(job)
                if until(job):
                    left.discard(job.id)
                    if not left:
                        return

    try:
        await asyncio.wait_for(consume(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{len(left)} job(s) did not get there in {timeout}s: "
                             f"{ {i: [Job.State.Name(j.state) for j in out[i]] for i in list(left)[:3]} }") from None
    finally:
        call.cancel()
    return out


# -- exactly once, two workers ------------------------------------------------------------


async def test_two_workers_run_every_job_exactly_once_with_its_result(wapp: App, jobs: Any) -> None:
    calls: Counter[str] = Counter()
    types_seen: dict[str, set[str]] = defaultdict(set)

    def make(name: str) -> Worker:
        w = Worker(target(wapp), concurrency=8, lease_duration=30, identity=name)

        @w.handler("SDK_A")
        async def double(ctx: JobContext) -> dict[str, Any]:  # async: runs on the loop
            calls[ctx.job_id] += 1
            types_seen[name].add(ctx.job_type)
            await asyncio.sleep(0)
            return {"n": ctx.params["n"] * 2, "by": name}

        @w.handler("SDK_B")
        def square(ctx: JobContext) -> dict[str, Any]:  # sync: runs in the thread pool
            calls[ctx.job_id] += 1
            types_seen[name].add(ctx.job_type)
            return {"n": ctx.params["n"] ** 2, "by": name, "attempt": ctx.attempt}

        return w

    w1, w2 = make("w1"), make("w2")
    async with running(w1):
        async with running(w2, types=["SDK_A"]):  # w2 has an SDK_B handler but does not serve it
            await asyncio.wait_for(wapp.dispatcher.wait_for_waiting(2), TIMEOUT)
            rev = await revision(jobs)
            made = await create(jobs, *[req("SDK_A", n=i) for i in range(100)],
                                *[req("SDK_B", n=i) for i in range(100)], *[req("SDK_C", n=0)] * 3)
            by_id = {j.id: j for j in made}
            ab = {j.id for j in made if j.type != "SDK_C"}
            seen = await history(jobs, rev, ab, types=["SDK_A", "SDK_B"],
                                 until=lambda j: j.state == Job.SUCCEEDED, timeout=20)

    assert set(calls) == ab and set(calls.values()) == {1}, "each job's handler ran exactly once"
    for job_id, evs in seen.items():
        n = by_id[job_id].params["n"]
        states = [e.state for e in evs]
        assert states.count(Job.RUNNING) == 1 and states.count(Job.SUCCEEDED) == 1, states
        final = evs[-1]
        expected = n * 2 if final.type == "SDK_A" else n ** 2
        assert final.state == Job.SUCCEEDED and final.result["n"] == expected and final.progress == 100
        assert final.result["by"] in ("w1", "w2")
    assert types_seen["w2"] <= {"SDK_A"}, "w2 never ran a type it does not serve"
    untouched = await jobs.ListJobs(svc.ListJobsRequest(types=["SDK_C"]))
    assert [j.state for j in untouched.jobs] == [Job.PENDING] * 3, "nobody serves SDK_C"
    assert w1.stats["completed"] + w2.stats["completed"] == 200


async def test_batches_acquisition_and_completion_without_per_job_heartbeats(wapp: App, jobs: Any) -> None:
    await create(jobs, *[req("SDK_NOOP")] * 300)
    w = Worker(target(wapp), concurrency=100, lease_duration=30)
    done = asyncio.Event()

    @w.handler("SDK_NOOP")
    async def noop(ctx: JobContext) -> None:
        if w.stats["acquired"] == 300:
            done.set()

    async with running(w):
        await asyncio.wait_for(done.wait(), TIMEOUT)
        await asyncio.wait_for(wapp.dispatcher.wait_for_waiting(1), TIMEOUT)  # all taken; parked again
    listed = await jobs.ListJobs(svc.ListJobsRequest(types=["SDK_NOOP"], states=[Job.SUCCEEDED], page_size=1))
    assert listed.total_size == 300
    assert w.stats["acquire_calls"] <= 6, w.stats  # 100 per call
    assert w.stats["complete_calls"] <= 12, w.stats  # coalesced, not one call per job
    assert w.stats["heartbeats"] == 0, "jobs that end within lease/3 get no heartbeat"


# -- progress, abort ------------------------------------------------------------------------


async def test_progress_from_a_sync_handler_shows_in_watch_with_the_sync_api(wapp: App, jobs: Any) -> None:
    gate = threading.Event()
    w = Worker(target(wapp), concurrency=2, progress_interval=0.05)

    @w.handler("SDK_PROGRESS")
    def encode(ctx: JobContext) -> dict[str, Any]:
        ctx.report_progress(25, "probing")
        ctx.report_progress(50, "half way", {"frames": 120})
        assert gate.wait(TIMEOUT), "the test never saw 50%"
        ctx.report_progress(75, "muxing")
        return {"ok": True}

    thread = threading.Thread(target=w.run_sync, name="sync-worker", daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(wapp.dispatcher.wait_for_waiting(1), TIMEOUT)
        rev = await revision(jobs)
        (job,) = await create(jobs, req("SDK_PROGRESS"))

        def on_event(j: Job) -> None:
            if j.progress >= 50:
                gate.set()

        evs = (await history(jobs, rev, {job.id}, on_event=on_event))[job.id]
    finally:
        gate.set()
        w.stop()
        await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive(), "run_sync returned after stop()"
    progress = [e.progress for e in evs]
    assert progress == sorted(progress), progress
    half = [e for e in evs if e.progress == 50]
    assert half and half[0].progress_message == "half way" and half[0].progress_details["frames"] == 120
    assert evs[-1].state == Job.SUCCEEDED and evs[-1].progress == 100 and evs[-1].result["ok"] is True


async def test_abort_while_running_reaches_the_handler_and_ends_aborted(wapp: App, jobs: Any) -> None:
    started = asyncio.Event()
    seen: dict[str, Any] = {}
    w = Worker(target(wapp), concurrency=2, lease_duration=1.5)  # heartbeat every 0.5 s

    @w.handler("SDK_ABORT")
    async def long_job(ctx: JobContext) -> dict[str, Any]:
        started.set()
        seen["cancelled"] = await ctx.wait_cancelled_async(TIMEOUT)
        seen["reason"] = ctx.cancel_reason
        seen["skip_cleanup"] = ctx.skip_cleanup
        ctx.check_cancelled()  # raises JobCancelled
        return {"never": True}

    async with running(w):
        rev = await revision(jobs)
        (job,) = await create(jobs, req("SDK_ABORT"))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        aborting = await jobs.AbortJob(svc.AbortJobRequest(id=job.id, reason="wrong source", skip_cleanup=True))
        assert aborting.state == Job.ABORTING
        evs = (await history(jobs, rev, {job.id}, timeout=3))[job.id]
        elapsed = loop.time() - t0
    assert seen == {"cancelled": True, "reason": "aborted", "skip_cleanup": True}
    assert evs[-1].state == Job.ABORTED and not evs[-1].HasField("result")
    assert elapsed < 2.5, f"the abort reached the worker with its next heartbeat, not {elapsed:.2f}s later"


# -- retry and failure ---------------------------------------------------------------------------


async def test_retryable_error_retries_and_other_exceptions_fail_the_job(wapp: App, jobs: Any) -> None:
    w = Worker(target(wapp), concurrency=4)

    @w.handler("SDK_FLAKY")
    async def flaky(ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            raise RetryableError("storage hiccup", retry_delay=0.05)
        return {"attempt": ctx.attempt}

    @w.handler("SDK_BROKEN")
    def broken(ctx: JobContext) -> None:
        raise ValueError(f"corrupt source {ctx.params['input']}")

    async with running(w):
        rev = await revision(jobs)
        flaky_job, broken_job = await create(jobs, req("SDK_FLAKY"), req("SDK_BROKEN", input="a.mov"))
        seen = await history(jobs, rev, {flaky_job.id, broken_job.id})

    f = seen[flaky_job.id]
    assert [e.state for e in f] == [Job.RUNNING, Job.PENDING, Job.RUNNING, Job.SUCCEEDED]
    assert "storage hiccup" in f[1].progress_message
    assert f[-1].result["attempt"] == 2 and f[-1].attempt_count == 2
    b = seen[broken_job.id]
    assert [e.state for e in b] == [Job.RUNNING, Job.FAILED], "not retryable: FAILED on the first attempt"
    assert b[-1].error.code == code_pb2.UNKNOWN and b[-1].error.message == "ValueError: corrupt source a.mov"
    debug = error_details_pb2.DebugInfo()
    assert b[-1].error.details and b[-1].error.details[0].Unpack(debug)
    assert any("in broken" in line for line in debug.stack_entries), "the traceback travels with the error"


# -- graceful stop ------------------------------------------------------------------------------------


async def test_stop_releases_a_job_still_running_so_another_worker_takes_it_at_once(wapp: App, jobs: Any) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    gate = threading.Event()
    first: dict[str, Any] = {}
    returned = threading.Event()
    w1 = Worker(target(wapp), concurrency=1, lease_duration=30)

    @w1.handler("SDK_SLOW")
    def slow(ctx: JobContext) -> dict[str, Any]:
        loop.call_soon_threadsafe(started.set)
        gate.wait(TIMEOUT)
        first["cancelled"], first["reason"] = ctx.cancelled, ctx.cancel_reason
        returned.set()
        return {"by": "w1"}

    w2 = Worker(target(wapp), concurrency=1, lease_duration=30)
    taken = asyncio.Event()

    @w2.handler("SDK_SLOW")
    async def quick(ctx: JobContext) -> dict[str, Any]:
        taken.set()
        return {"by": "w2", "attempt": ctx.attempt}

    rev = await revision(jobs)
    (job,) = await create(jobs, req("SDK_SLOW"))
    t1 = asyncio.create_task(w1.run(handle_signals=False))
    try:
        await asyncio.wait_for(started.wait(), TIMEOUT)
        async with running(w2):
            await asyncio.wait_for(wapp.dispatcher.wait_for_waiting(1), TIMEOUT)  # w2 is parked; w1 is full
            t0 = loop.time()
            w1.stop(drain_timeout=0.2)
            await asyncio.wait_for(t1, TIMEOUT)
            stopped_after = loop.time() - t0
            await asyncio.wait_for(taken.wait(), TIMEOUT)
            taken_after = loop.time() - t0
            evs = (await history(jobs, rev, {job.id}))[job.id]
    finally:
        gate.set()
        if not t1.done():
            w1.stop(0)
            await t1
    assert 0.2 <= stopped_after < 2, stopped_after
    assert taken_after < 2, "released, not left to expire (the lease is 30 s)"
    states = [e.state for e in evs]
    assert states == [Job.RUNNING, Job.PENDING, Job.RUNNING, Job.SUCCEEDED], states
    assert evs[1].attempt_count == 0 and evs[1].progress_message == "released by its worker"
    assert evs[-1].result["by"] == "w2" and evs[-1].result["attempt"] == 1  # the release gave the attempt back
    assert w1.stats["released"] == 1
    assert await asyncio.to_thread(returned.wait, TIMEOUT)
    assert first == {"cancelled": True, "reason": "worker stopping"}
    after = await jobs.GetJob(svc.GetJobRequest(id=job.id))
    assert after.revision == evs[-1].revision and after.result["by"] == "w2", "w1's late result was dropped"


async def test_stop_waits_for_handlers_that_finish_within_the_drain_timeout(wapp: App, jobs: Any) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()
    w = Worker(target(wapp), concurrency=2)

    @w.handler("SDK_DRAIN")
    async def h(ctx: JobContext) -> dict[str, Any]:
        started.set()
        await finish.wait()
        return {"drained": True}

    rev = await revision(jobs)
    (job,) = await create(jobs, req("SDK_DRAIN"))
    task = asyncio.create_task(w.run(handle_signals=False))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    w.stop(drain_timeout=TIMEOUT)
    finish.set()
    await asyncio.wait_for(task, TIMEOUT)
    evs = (await history(jobs, rev, {job.id}))[job.id]
    assert evs[-1].state == Job.SUCCEEDED and evs[-1].result["drained"] is True, "its result was sent before run() returned"
    assert w.stats["released"] == 0


async def test_cancelling_run_releases_held_jobs(wapp: App, jobs: Any) -> None:
    started = asyncio.Event()
    w = Worker(target(wapp), concurrency=1)

    @w.handler("SDK_CANCEL")
    async def h(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()  # forever

    rev = await revision(jobs)
    (job,) = await create(jobs, req("SDK_CANCEL"))
    task = asyncio.create_task(w.run(handle_signals=False))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    evs = (await history(jobs, rev, {job.id}, until=lambda j: j.state == Job.PENDING))[job.id]
    assert [e.state for e in evs] == [Job.RUNNING, Job.PENDING] and evs[-1].attempt_count == 0


# -- server restart -----------------------------------------------------------------------------------


class _LogEvent(logging.Handler):
    """Sets an asyncio.Event (thread-safely) when a matching record is logged."""

    def __init__(self, loop: asyncio.AbstractEventLoop, needle: str) -> None:
        super().__init__()
        self.loop, self.needle, self.event = loop, needle, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


async def test_worker_survives_a_server_restart_and_keeps_held_results(sqlite_path: str) -> None:
    loop = asyncio.get_running_loop()
    app1 = await start_app(sqlite_path)
    port = app1.port
    app2: App | None = None
    gate = asyncio.Event()
    started = asyncio.Event()
    w = Worker(f"127.0.0.1:{port}", concurrency=4, lease_duration=30, backoff=FAST)

    @w.handler("SDK_RESTART")
    async def h(ctx: JobContext) -> dict[str, Any]:
        if ctx.params.get("hold"):
            started.set()
            await gate.wait()
        return {"name": ctx.params["name"]}

    failed_flush = _LogEvent(loop, "completion(s) failed")
    logging.getLogger("mediajobs.worker").addHandler(failed_flush)
    task = asyncio.create_task(w.run(handle_signals=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            (held,) = await create(job_service_pb2_grpc.JobServiceStub(ch), req("SDK_RESTART", name="held", hold=True))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await app1.stop(None)
        gate.set()  # the result is ready while the server is down: CompleteJobs fails with UNAVAILABLE
        await asyncio.wait_for(failed_flush.event.wait(), TIMEOUT)
        app2 = await build_server(Config(listen=f"127.0.0.1:{port}", db=sqlite_path,
                                         storage_root=Path(sqlite_path).parent / "storage"))
        await app2.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            rev = await revision(jobs)
            (after,) = await create(jobs, req("SDK_RESTART", name="after"))
            seen = await history(jobs, rev, {after.id}, timeout=15)
            held_now = await jobs.GetJob(svc.GetJobRequest(id=held.id))
    finally:
        logging.getLogger("mediajobs.worker").removeHandler(failed_flush)
        w.stop(0)
        await asyncio.wait_for(task, TIMEOUT)
        if app2 is not None:
            await app2.stop(None)
    assert seen[after.id][-1].state == Job.SUCCEEDED and seen[after.id][-1].result["name"] == "after"
    assert held_now.state == Job.SUCCEEDED and held_now.result["name"] == "held", \
        "the completion that failed during the outage was retried with its still-valid token"
    assert held_now.attempt_count == 1


async def test_a_refused_worker_stops_with_the_error(wapp: App) -> None:
    w = Worker(target(wapp))
    w.register("not a type!", lambda ctx: None)
    with pytest.raises(MediaJobsError) as e:
        await asyncio.wait_for(w.run(handle_signals=False), TIMEOUT)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_handler_registration_and_validation() -> None:
    w = Worker(lock_key=("sched", "w7", 3), concurrency=3)
    assert (w.lock_key.scheduler_id, w.lock_key.worker_id, w.lock_key.batch_index) == ("sched", "w7", 3)

    @w.handler("T1")
    def one(ctx: JobContext) -> None: ...

    async def two(ctx: JobContext) -> None: ...

    w.register("T2", two)
    assert w.job_types == ["T1", "T2"]
    with pytest.raises(ValueError):
        Worker(concurrency=0)
    with pytest.raises(ValueError, match="no handler registered for T3"):
        asyncio.run(w.run(types=["T3"], handle_signals=False))
    with pytest.raises(JobCancelled):
        raise JobCancelled("aborted")


# -- the CLI ------------------------------------------------------------------------------------------------


HANDLERS_MODULE = textwrap.dedent(
    """
    def echo(ctx):
        ctx.report_progress(50, "echoing")
        return {"echo": ctx.params["text"].upper(), "attempt": ctx.attempt}

    HANDLERS = {"SDK_ECHO": echo}
    """
)


async def test_cli_worker_runs_a_module_and_exits_0_on_sigterm(wapp: App, jobs: Any, tmp_path: Any) -> None:
    (tmp_path / "echo_handlers.py").write_text(HANDLERS_MODULE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.client", "worker", "echo_handlers", "--server", target(wapp),
        "--concurrency", "2", "--lease", "10", "-v",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "MEDIAJOBS_SERVER"},
    )
    try:
        rev = await revision(jobs)
        (job,) = await create(jobs, req("SDK_ECHO", text="hello"))
        evs = (await history(jobs, rev, {job.id}, timeout=30))[job.id]
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 0, text
    assert evs[-1].state == Job.SUCCEEDED and evs[-1].result["echo"] == "HELLO", text
    assert f"job {job.id} SDK_ECHO done in" in text, "one line per job with -v"
    assert "stopped (1 completed" in text


BLOCKING_MODULE = textwrap.dedent(
    """
    from mediajobs.client import Worker

    worker = Worker(concurrency=1)

    @worker.handler("SDK_BLOCK")
    def block(ctx):
        ctx.wait_cancelled(60)  # until the worker stops without waiting for it
        return {"finished": True}
    """
)


async def test_cli_worker_second_signal_releases_running_jobs_at_once(wapp: App, jobs: Any, tmp_path: Any) -> None:
    (tmp_path / "block_handlers.py").write_text(BLOCKING_MODULE)
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.client", "--server", target(wapp), "worker", "block_handlers:worker",
        "--drain-timeout", "60",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def read_until(needle: str) -> None:
        while True:
            line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
            assert line, f"stderr ended before {needle!r}: {lines}"
            lines.append(line)
            if needle in line:
                return

    try:
        rev = await revision(jobs)
        (job,) = await create(jobs, req("SDK_BLOCK"))
        await history(jobs, rev, {job.id}, until=lambda j: j.state == Job.RUNNING, timeout=30)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(read_until("SIGINT: stopping"), TIMEOUT)  # draining, up to 60 s
        t0 = loop.time()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(read_until("releasing 1 job"), TIMEOUT)
        evs = (await history(jobs, rev, {job.id}, until=lambda j: j.state == Job.PENDING))[job.id]
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        elapsed = loop.time() - t0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(lines) + err.decode()
    assert evs[-1].state == Job.PENDING and evs[-1].attempt_count == 0
    assert elapsed < 5, "the second signal did not wait for the drain timeout"


def test_cli_worker_finds_a_worker_attribute_and_reports_bad_modules(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mediajobs.client.cli import load_worker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "sdk_mod_a.py").write_text(textwrap.dedent(
        """
        from mediajobs.client import Worker
        worker = Worker(concurrency=3)
        other = Worker()

        @worker.handler("A1")
        async def a1(ctx):
            return None

        @other.handler("B1")
        def b1(ctx):
            return None

        NOT_A_WORKER = 42
        """
    ))
    (tmp_path / "sdk_mod_empty.py").write_text("x = 1\n")
    for name in ("sdk_mod_a", "sdk_mod_empty"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert load_worker("sdk_mod_a").job_types == ["A1"]
    assert load_worker("sdk_mod_a:other").job_types == ["B1"]
    assert load_worker(str(tmp_path / "sdk_mod_a.py")).concurrency == 3

    for argv, message in (
        (["worker", "sdk_no_such_module"], "no module named 'sdk_no_such_module'"),
        (["worker", "sdk_mod_empty"], "neither a Worker named `worker` nor a HANDLERS dict"),
        (["worker", "sdk_mod_a:missing"], "has no attribute 'missing'"),
        (["worker", "sdk_mod_a:NOT_A_WORKER"], "is not a Worker or a {type: handler} dict (it is int)"),
        (["worker", "sdk_mod_a", "--types", "ZZZ"], "no handler for ZZZ"),
        (["worker", "sdk_mod_a", "--lease", "0.5"], "--lease must be between 1 and 600"),
    ):
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    for name in ("sdk_mod_a", "sdk_mod_empty"):
        sys.modules.pop(name, None)


async def test_a_result_the_server_would_refuse_fails_its_job_and_spares_the_others(wapp: App, jobs: Any) -> None:
    """A handler that returns NaN, or nests too deep, or reports such
    progress details: its job fails at once with the reason (the SDK checks
    with the server's rules), and the batch of completions it would have
    joined goes through."""
    w = Worker(target(wapp), concurrency=4, lease_duration=30)

    @w.handler("SDK_PAYLOAD")
    def handle(ctx: JobContext) -> dict[str, Any]:
        kind = ctx.params["kind"]
        if kind == "nan":
            return {"ratio": float("nan")}
        if kind == "deep":
            deep: dict[str, Any] = {}
            for _ in range(40):
                deep = {"x": deep}
            return deep
        if kind == "details":
            ctx.report_progress(50, "half", details={"inf": float("inf")})
        return {"ok": True}

    rev = await revision(jobs)
    made = await create(jobs, *[req("SDK_PAYLOAD", kind=k) for k in ("nan", "deep", "details", "fine", "fine")])
    async with running(w):
        seen = await history(jobs, rev, {j.id for j in made})
    final = {j.id: evs[-1] for j, evs in ((j, seen[j.id]) for j in made)}
    kinds = {j.id: j.params["kind"] for j in made}
    for job_id, job in final.items():
        if kinds[job_id] == "fine":
            assert job.state == Job.SUCCEEDED and job.result["ok"] is True
        else:
            assert job.state == Job.FAILED and job.attempt_count == 1, job
            assert job.error.message.startswith("PayloadError: "), job.error.message
    assert "result.ratio: nan is not a finite number" in final[made[0].id].error.message
    assert "nested 21 levels deep; at most 20" in final[made[1].id].error.message
    assert "details.inf: inf is not a finite number" in final[made[2].id].error.message
