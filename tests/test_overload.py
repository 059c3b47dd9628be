"""Overload: past each capacity limit a call fails at once with
RESOURCE_EXHAUSTED, an ErrorInfo naming the limit and a RetryInfo; health
checks are answered throughout; the calls that were admitted complete."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, start_app, status_detail
from test_bad_days import writer_blocked


def assert_overloaded(err: BaseException, limit: str) -> None:
    assert isinstance(err, grpc.aio.AioRpcError), err
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    info = error_info(err)
    assert info.reason == "OVERLOADED" and info.metadata["limit"] == limit, info
    assert f"--{limit}" in err.details() and "back-off" in err.details()
    assert status_detail(err, error_details_pb2.RetryInfo).retry_delay.ToMilliseconds() > 0


@contextlib.asynccontextmanager
async def server(tmp_path: Path, **limits: int) -> AsyncIterator[tuple[App, grpc.aio.Channel]]:
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=tmp_path / "storage", **limits)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield app, ch
    finally:
        await app.stop(None)


async def test_calls_past_the_concurrency_limit_fail_fast_and_health_is_answered(tmp_path: Path) -> None:
    async with server(tmp_path, max_concurrent_rpcs=4) as (app, ch):
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        async with writer_blocked(app):
            admitted = [asyncio.ensure_future(jobs.CreateJob(svc.CreateJobRequest(type="T", request_id=f"a{i}")))
                        for i in range(4)]
            await app.admission.wait_for_rpcs(4)  # the four are in the server, waiting for the writer
            burst = await asyncio.gather(
                *(jobs.CreateJob(svc.CreateJobRequest(type="T")) for _ in range(100)), return_exceptions=True
            )
            for err in burst:
                assert_overloaded(err, "max-concurrent-rpcs")
            # Health is its own servicer: never refused.
            reply = await health.Check(health_pb2.HealthCheckRequest(service="mediajobs.v1.JobService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert not any(f.done() for f in admitted)
        done = await asyncio.gather(*admitted)
        assert len({j.id for j in done}) == 4
        assert app.admission.rpcs == 0
        # Below the limit again: served.
        assert (await jobs.GetJob(svc.GetJobRequest(id=done[0].id))).id == done[0].id


async def test_mutations_past_the_write_queue_limit_fail_fast(tmp_path: Path) -> None:
    async with server(tmp_path, max_write_queue=3) as (app, ch):
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        async with writer_blocked(app):
            queued = [asyncio.ensure_future(jobs.CreateJob(svc.CreateJobRequest(type="T"))) for _ in range(3)]
            await app.admission.wait_for_rpcs(3)  # each is queued for the writer once admitted
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await jobs.CreateJob(svc.CreateJobRequest(type="T"))
            assert_overloaded(e.value, "max-write-queue")
            # Reads do not queue for the writer: still served.
            assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 0
        assert len(await asyncio.gather(*queued)) == 3


async def test_watch_streams_past_their_limit_are_refused(tmp_path: Path) -> None:
    async with server(tmp_path, max_watch_streams=2) as (app, ch):
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        streams = [jobs.WatchJobs(svc.WatchJobsRequest()) for _ in range(2)]
        for s in streams:
            await s.read()  # the "now" bookmark: the stream is open
        third = jobs.WatchJobs(svc.WatchJobsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await third.read()
        assert_overloaded(e.value, "max-watch-streams")
        streams[0].cancel()
        await app.hub.wait_for_watchers(1)
        again = jobs.WatchJobs(svc.WatchJobsRequest())
        assert (await again.read()).HasField("progress")
        again.cancel()
        streams[1].cancel()


async def test_parked_acquires_past_their_limit_are_refused(tmp_path: Path) -> None:
    async with server(tmp_path, max_parked_acquires=1) as (app, ch):
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        parked = asyncio.ensure_future(workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["P"])))
        await app.dispatcher.wait_for_waiting(1)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["P"]))
        assert_overloaded(e.value, "max-parked-acquires")
        # A no_wait acquire never parks: still served.
        assert not (await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["P"], no_wait=True))).jobs
        job = await jobs.CreateJob(svc.CreateJobRequest(type="P"))
        got = await parked
        assert [lj.job.id for lj in got.jobs] == [job.id]
        assert app.admission.parked == 0
