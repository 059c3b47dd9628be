"""Quotas over real channels: pending jobs, bulk uploads being written,
live jobs online, requests per second per API key. Beyond one a call fails
RESOURCE_EXHAUSTED naming the quota, with a RetryInfo."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from mediajobs.server.store import api_keys
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, start_app, status_detail


def assert_quota(e: grpc.aio.AioRpcError, quota: str) -> None:
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    info = error_info(e)
    assert info.metadata["quota"] == quota and quota in (e.details() or "")
    retry = status_detail(e, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() > 0


async def test_quotas_on_pending_jobs_uploads_and_live_jobs_online(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), quota_pending_jobs=2, quota_open_bulk_uploads=1,
                          quota_live_jobs_online=1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
            for _ in range(2):
                await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))
            assert_quota(e.value, "pending_jobs")
            got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["TRANSCODE"], no_wait=True,
                                                                    lease_duration=duration_pb2.Duration(seconds=30)))
            assert len(got.jobs) == 1  # one PENDING job left: room for one more, not two
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[
                    svc.CreateJobRequest(type="TRANSCODE"), svc.CreateJobRequest(type="TRANSCODE")]))
            assert_quota(e.value, "pending_jobs")
            await jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))

            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=bres.BulkUpload(file_name="a.csv")))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=bres.BulkUpload(file_name="b.csv")))
            assert_quota(e.value, "open_bulk_uploads")

            live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)
            made = [await live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
                bucket="q", destination=d, input=lres.LiveInput(server_type=lres.LiveInput.RTMP))))
                for d in ("one", "two")]
            await live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=made[0].stream_key, online=True))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=made[1].stream_key, online=True))
            assert_quota(e.value, "live_jobs_online")
            await live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=made[0].stream_key, online=False))
            await live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=made[1].stream_key, online=True))
    finally:
        await app.stop(None)


async def test_requests_per_second_per_key(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", quota_requests_per_second=2)
    try:
        keys: list[str] = []
        for _ in range(2):
            _k, text = await app.store.write(lambda tx: api_keys.create_key(tx.db, "default", "viewer", "", "t",
                                                                            tx.now))
            keys.append(text)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)

            def md(k: str) -> Any:
                return [("authorization", f"Bearer {k}")]

            await jobs.ListJobs(svc.ListJobsRequest(), metadata=md(keys[0]))
            await jobs.ListJobs(svc.ListJobsRequest(), metadata=md(keys[0]))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await jobs.ListJobs(svc.ListJobsRequest(), metadata=md(keys[0]))
            assert_quota(e.value, "requests_per_second")
            await jobs.ListJobs(svc.ListJobsRequest(), metadata=md(keys[1]))  # each key has its own bucket
    finally:
        await app.stop(None)
