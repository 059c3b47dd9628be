"""Bad days: a full disk, a lost PostgreSQL, callers whose deadline passes.

Each runs a real server over a real channel; the disk is a real tmpfs
(mounted when the tests run as root, as in CI) and the outage a real
PostgreSQL refusing and dropping connections.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import grpc
import peewee
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import IN_CI, PG_URL, error_info, pg_available, start_app

Job = res.Job
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    """grpc.health.v1.Health/Watch of the whole server, read in the background:
    each status change with the monotonic time it arrived."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        self.changes: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for msg in self.call:
                await self.changes.put((msg.status, time.monotonic()))

    async def wait_for(self, status: int, timeout: float = 10) -> float:
        """The time `status` was reported (skipping others)."""
        while True:
            got, at = await asyncio.wait_for(self.changes.get(), timeout)
            if got == status:
                return at

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


@contextlib.asynccontextmanager
async def writer_blocked(app: App) -> AsyncIterator[None]:
    """Hold the store's writer thread until the block ends (what a slow
    disk looks like to the server): every write queues meanwhile."""
    gate, entered = threading.Event(), threading.Event()

    def block(tx: object) -> None:
        entered.set()
        gate.wait(60)

    fut = app.store.submit(block, bounded=False)
    await asyncio.to_thread(entered.wait, 10)
    try:
        yield
    finally:
        gate.set()
        await fut


# -- a full disk -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only, as in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs in CI: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)


async def test_a_full_disk_refuses_writes_with_resource_exhausted_and_health_follows(
    small_disk: Path, tmp_path: Path
) -> None:
    app = await start_app(str(small_disk / "mediajobs.db"), storage_root=tmp_path / "storage")
    big = struct_pb2.Struct()
    big.update({"blob": "x" * 150_000})
    acked: list[str] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            health = HealthWatch(ch)
            await health.wait_for(SERVING)
            for i in range(3):
                acked.append((await jobs.CreateJob(svc.CreateJobRequest(type="T", params=big,
                                                                         request_id=f"r{i}"))).id)
            fill(small_disk / "filler")
            refused_at = None
            for i in range(3, 40):  # the WAL has some room left; soon it has none
                try:
                    acked.append((await jobs.CreateJob(svc.CreateJobRequest(type="T", params=big,
                                                                             request_id=f"r{i}"))).id)
                except grpc.aio.AioRpcError as e:
                    refused_at = time.monotonic()
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                    info = error_info(e)
                    assert info.reason == "DISK_FULL" and info.domain == "mediajobs"
                    assert "disk is full" in e.details()
                    break
            assert refused_at is not None, "the disk never filled up"
            not_serving_at = await health.wait_for(NOT_SERVING)
            assert not_serving_at - refused_at < 1.0
            # Reads still work while writes cannot.
            assert (await jobs.GetJob(svc.GetJobRequest(id=acked[0]))).id == acked[0]

            freed_at = time.monotonic()
            (small_disk / "filler").unlink()
            serving_at = await health.wait_for(SERVING)
            assert serving_at - freed_at < 1.0
            retry = await jobs.CreateJob(svc.CreateJobRequest(type="T", params=big, request_id="after"))
            acked.append(retry.id)
            health.close()
    finally:
        await app.stop(None)

    # Nothing acknowledged was lost, nothing unacknowledged was written.
    app = await start_app(str(small_disk / "mediajobs.db"), storage_root=tmp_path / "storage")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            page = await job_service_pb2_grpc.JobServiceStub(ch).ListJobs(svc.ListJobsRequest(page_size=100))
            assert sorted(j.id for j in page.jobs) == sorted(acked)
    finally:
        await app.stop(None)


# -- a lost PostgreSQL -------------------------------------------------------


def _admin(sql: str) -> list[tuple]:
    db = peewee.PostgresqlDatabase("postgres", host="127.0.0.1", port=5432, user="postgres")
    db.connect()
    try:
        cur = db.execute_sql(sql)
        return list(cur.fetchall()) if cur.description else []
    finally:
        db.close()


@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A database of its own, so the test can refuse its connections."""
    if not pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable, and CI requires the PostgreSQL tests to run")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable")
    name = "mj_outage_" + uuid.uuid4().hex[:10]
    _admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        _admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        _admin(f"DROP DATABASE IF EXISTS {name}")


def _terminate(name: str) -> int:
    return len(_admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))


async def test_a_postgresql_outage_is_unavailable_and_the_server_reconnects_by_itself(
    own_pg_database: str, tmp_path: Path
) -> None:
    name = own_pg_database
    app = await start_app(f"postgresql://postgres@127.0.0.1:5432/{name}", storage_root=tmp_path / "storage")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            health = HealthWatch(ch)
            await health.wait_for(SERVING)
            before = await jobs.CreateJob(svc.CreateJobRequest(type="T", request_id="before"))

            await asyncio.to_thread(_admin, f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
            assert await asyncio.to_thread(_terminate, name) >= 1
            for call in (jobs.CreateJob(svc.CreateJobRequest(type="T", request_id="during")),
                         jobs.GetJob(svc.GetJobRequest(id=before.id)),
                         jobs.ListJobs(svc.ListJobsRequest())):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
                assert error_info(e.value).reason == "DATABASE_UNAVAILABLE"
                assert "retry" in e.value.details()
            await health.wait_for(NOT_SERVING)

            back_at = time.monotonic()
            await asyncio.to_thread(_admin, f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
            serving_at = await health.wait_for(SERVING)
            assert serving_at - back_at < 5.0
            assert (await jobs.GetJob(svc.GetJobRequest(id=before.id))).id == before.id
            # The retried create (same request_id) is created once.
            during = await jobs.CreateJob(svc.CreateJobRequest(type="T", request_id="during"))
            again = await jobs.CreateJob(svc.CreateJobRequest(type="T", request_id="during"))
            assert during.id == again.id
            page = await jobs.ListJobs(svc.ListJobsRequest())
            assert sorted(j.id for j in page.jobs) == sorted([before.id, during.id])
            health.close()
    finally:
        await app.stop(None)


async def test_pg_terminate_backend_while_calls_run_loses_nothing_acknowledged(
    own_pg_database: str, tmp_path: Path
) -> None:
    """Connections killed under load: every call succeeds or fails
    UNAVAILABLE (never INTERNAL); retried with its request_id, every create
    lands exactly once."""
    name = own_pg_database
    app = await start_app(f"postgresql://postgres@127.0.0.1:5432/{name}", storage_root=tmp_path / "storage")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            outcomes: collections.Counter[str] = collections.Counter()
            created: dict[str, str] = {}
            stop = asyncio.Event()
            milestone: tuple[int, asyncio.Event] = (0, asyncio.Event())

            def succeeded() -> None:
                outcomes["OK"] += 1
                if outcomes["OK"] >= milestone[0]:
                    milestone[1].set()

            async def calls_succeed(n: int) -> None:
                nonlocal milestone
                milestone = (outcomes["OK"] + n, asyncio.Event())
                await asyncio.wait_for(milestone[1].wait(), 30)

            async def client(n: int) -> None:
                i = 0
                while not stop.is_set():
                    rid = f"c{n}-{i}"
                    for attempt in range(50):
                        try:
                            j = await jobs.CreateJob(svc.CreateJobRequest(type="T", request_id=rid))
                            await jobs.GetJob(svc.GetJobRequest(id=j.id))
                            created[rid] = j.id
                            succeeded()
                            break
                        except grpc.aio.AioRpcError as e:
                            outcomes[e.code().name] += 1
                            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                            await asyncio.sleep(0.05 * (attempt + 1))  # the client's back-off, not synchronisation
                    else:
                        raise AssertionError(f"{rid} never succeeded")
                    i += 1

            clients = [asyncio.create_task(client(n)) for n in range(8)]
            for _ in range(3):
                await calls_succeed(20)  # some calls through between kills
                assert await asyncio.to_thread(_terminate, name) >= 1
            await calls_succeed(20)
            stop.set()
            await asyncio.gather(*clients)
            assert set(outcomes) <= {"OK", "UNAVAILABLE"}
            page = await jobs.ListJobs(svc.ListJobsRequest(page_size=1000))
            assert page.total_size == len(created) and {j.id for j in page.jobs} == set(created.values())
    finally:
        await app.stop(None)


# -- callers whose deadline passes -----------------------------------------------


async def _running(jobs: job_service_pb2_grpc.JobServiceStub) -> int:
    return (await jobs.ListJobs(svc.ListJobsRequest(states=[Job.RUNNING], page_size=1))).total_size


async def test_an_acquire_whose_deadline_passes_while_its_lease_commits_gives_the_job_back(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        job = await jobs.CreateJob(svc.CreateJobRequest(type="DL"))
        async with writer_blocked(app):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["DL"], no_wait=True), timeout=0.3)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The lease committed after the caller had gone: it is undone. (The
        # server may notice the deadline after the client does, so follow the
        # job's changes until it is PENDING again, rather than racing it.)
        async for resp in jobs.WatchJobs(svc.WatchJobsRequest(job_ids=[job.id], start_revision=job.revision + 1),
                                         timeout=60):
            if any(ev.job.state == Job.PENDING for ev in resp.events):
                break
        await app.worker_service.give_backs_done()
        back = await jobs.GetJob(svc.GetJobRequest(id=job.id))
        assert back.state == Job.PENDING and back.attempt_count == 0
        again = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["DL"], no_wait=True))
        assert [lj.job.id for lj in again.jobs] == [job.id]


async def test_acquires_with_expiring_deadlines_never_leave_a_job_leased_to_nobody(app: App) -> None:
    """Many AcquireJobs whose deadlines run out at every stage of the call:
    afterwards exactly the jobs whose replies arrived are RUNNING."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        n = 400
        await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="DL")] * n))
        delivered: list[str] = []

        async def one(i: int) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                # Every other call has time enough; the rest run out at every stage.
                r = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["DL"], no_wait=True),
                                              timeout=10.0 if i % 2 else 0.004 * (i % 50 + 1))
                delivered.extend(lj.job.id for lj in r.jobs)

        await asyncio.gather(*(one(i) for i in range(n)))
        await app.worker_service.give_backs_done()
        running = await jobs.ListJobs(svc.ListJobsRequest(states=[Job.RUNNING], page_size=1000))
        assert sorted(j.id for j in running.jobs) == sorted(delivered)
        assert n // 2 <= len(delivered) < n  # the patient calls all got a job, some others did not
