"""Transport hygiene over real channels: connections past
--max-connection-age are closed and a watch resumes on the next one without
a gap or a repeat; a client that pings too often gets GOAWAY
(too_many_pings)."""
from __future__ import annotations

import asyncio
import queue
import threading
from pathlib import Path

import grpc
import pytest

from mediajobs.client import MediaJobsClient
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc

from conftest import start_app


async def test_an_aged_out_connection_is_replaced_and_the_watch_resumes_without_a_gap(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), max_connection_age_s=1.0, max_connection_age_grace_s=0.5)
    got: "queue.Queue[tuple[int, str]]" = queue.Queue()
    retried = threading.Event()
    client = MediaJobsClient(f"127.0.0.1:{app.port}")
    watch = client.watch_jobs(start_revision=1, on_retry=lambda info: retried.set(), include_progress=False)

    def follow() -> None:
        for msg in watch:
            for ev in msg.events:
                got.put((ev.revision, ev.job.id))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            first = await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))
            assert await asyncio.to_thread(got.get, True, 10) == (first.revision, first.id)
            # The server closes the watch's connection at its age; the watch comes back by itself.
            assert await asyncio.to_thread(retried.wait, 20)
            later = [await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE")) for _ in range(3)]
            seen = [await asyncio.to_thread(got.get, True, 10) for _ in later]
            assert seen == [(j.revision, j.id) for j in later]  # in order, none lost, none repeated
            assert got.empty()
    finally:
        watch.cancel()
        await asyncio.to_thread(reader.join, 10)
        client.close()
        await app.stop(None)


async def test_a_client_that_pings_too_often_gets_goaway(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"))
    options = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_timeout_ms", 5_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            call = jobs.WatchJobs(svc.WatchJobsRequest(start_revision=0), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
            assert "too many pings" in (e.value.details() or "").lower()  # GOAWAY ENHANCE_YOUR_CALM too_many_pings
    finally:
        await app.stop(None)
