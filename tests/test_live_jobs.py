"""LiveJobService and the live worker RPCs (WorkerService.AuthorizePublish,
ReportLiveStatus) over a real channel, on SQLite and PostgreSQL. The live
worker here is the test itself, making the calls a live worker makes, so
every state of a session can be checked in between; the server's clock is
a FakeClock (leases run out and scheduled starts come by moving it)."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import queue
import threading
import uuid
import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import FakeClock, error_info, field_violations, start_app

LiveJob = lres.LiveJob
LiveInput = lres.LiveInput
S = LiveJob.State
Job = res.Job


class Env:
    def __init__(self, ch: grpc.aio.Channel, clock: FakeClock, root: Path) -> None:
        self.root = root
        self.live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.clock = clock

    async def create(self, destination: str = "studio-a/main", **kw: Any) -> LiveJob:
        spec = LiveJob(bucket=kw.pop("bucket", "events"), destination=destination,
                       input=kw.pop("input", LiveInput(server_type=LiveInput.RTMP)), **kw)
        return await self.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=spec))

    async def lease(self, lease_s: int = 30) -> wsvc.LeasedJob:
        got = await self.workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=["LIVE_ENCODE"], max_jobs=1, no_wait=True, identity="live-worker-1",
            lease_duration=duration_pb2.Duration(seconds=lease_s),
            lock_key=res.LockKey(scheduler_id="host1", worker_id="live", batch_index=0)))
        assert len(got.jobs) == 1, "no LIVE_ENCODE job to lease"
        return got.jobs[0]

    async def report(self, leased: wsvc.LeasedJob, state: int = 0, **kw: Any) -> wsvc.ReportLiveStatusResponse:
        return await self.workers.ReportLiveStatus(wsvc.ReportLiveStatusRequest(
            job_id=leased.job.id, lease_token=leased.lease_token, live_state=state, **kw))

    async def timings(self, live_id: str, **kw: Any) -> list[lres.LiveTiming]:
        out: list[lres.LiveTiming] = []
        token = ""
        while True:
            page = await self.live.ListLiveTimings(lsvc.ListLiveTimingsRequest(
                live_job_id=live_id, page_size=3, page_token=token, **kw))
            out += page.timings
            token = page.next_page_token
            if not token:
                return out


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    app = await start_app(db_url, clock=clock, storage_root=tmp_path / "storage",
                          live_ingest_url="rtmp://live.example.com:1935/live",
                          live_playback_base_url="https://cdn.example.com/media", allow_private_callbacks=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Env(ch, clock, tmp_path / "storage")
    finally:
        await app.stop(None)


def reason(e: grpc.aio.AioRpcError) -> str:
    return error_info(e).reason


async def test_create_assigns_name_key_urls_and_manifests(env: Env) -> None:
    lj = await env.create(description="Studio A main feed", cdn_distribution=True)
    assert lj.state == S.OFFLINE and lj.number >= 1 and len(lj.id) == 26
    assert str(uuid.UUID(lj.name)) == lj.name and str(uuid.UUID(lj.stream_key)) == lj.stream_key
    assert lj.name != lj.stream_key
    assert lj.rtmp_server == "rtmp://live.example.com:1935/live"
    assert lj.ingest_url == f"rtmp://live.example.com:1935/live/{lj.stream_key}"
    assert lj.job_template_id == "hls-live-360p-240p" and lj.web_socket_connection == ""
    assert lj.storage_master_file == "live/events/studio-a/main/master.m3u8"
    assert dict(lj.output_manifests) == {"360p": "live/events/studio-a/main/360p/index.m3u8",
                                         "240p": "live/events/studio-a/main/240p/index.m3u8"}
    assert lj.playback_url == "https://cdn.example.com/media/live/events/studio-a/main/master.m3u8"
    assert [(o.value, o.enabled) for o in lj.input.server_type_options] == [
        ("RTMP", True), ("SRT", False), ("HLS", False)]
    assert [(o.value, o.enabled) for o in lj.input.input_class_options] == [("SINGLE", True), ("STANDARD", False)]
    assert lj.reconnect_window.seconds == 60 and lj.max_duration.seconds == 12 * 3600
    got = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    by_name = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.name))
    assert got == by_name == lj
    outs = await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))
    assert [(o.output_id, o.name, o.status) for o in outs.outputs] == [
        (1, "360p", lres.LiveOutput.WAITING), (2, "240p", lres.LiveOutput.WAITING)]
    assert outs.page_info.total_count == 2
    assert [t.child_status for t in await env.timings(lj.id)] == ["CREATED"]
    # request_id: the same live job again; another request under it is refused.
    req = lsvc.CreateLiveJobRequest(live_job=LiveJob(bucket="events", destination="b", input=LiveInput(
        server_type=LiveInput.RTMP)), request_id="r-1")
    a = await env.live.CreateLiveJob(req)
    assert (await env.live.CreateLiveJob(req)).id == a.id
    req.live_job.destination = "c"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.CreateLiveJob(req)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_refuses_bad_input_with_the_field_to_fix(env: Env) -> None:
    cases: list[tuple[LiveJob, grpc.StatusCode, str]] = [
        (LiveJob(destination="x", input=LiveInput(server_type=1)), grpc.StatusCode.INVALID_ARGUMENT,
         "live_job.bucket"),
        (LiveJob(bucket="b", destination="a/../etc", input=LiveInput(server_type=1)),
         grpc.StatusCode.INVALID_ARGUMENT, "live_job.destination"),
        (LiveJob(bucket="b", destination="d"), grpc.StatusCode.INVALID_ARGUMENT, "live_job.input.server_type"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=9)), grpc.StatusCode.INVALID_ARGUMENT,
         "live_job.input.server_type"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=3)), grpc.StatusCode.INVALID_ARGUMENT,
         "live_job.input.file_path"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1, callback_url="ftp://x/y")),
         grpc.StatusCode.INVALID_ARGUMENT, "live_job.input.callback_url"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1),
                 reconnect_window=duration_pb2.Duration(seconds=4000)), grpc.StatusCode.INVALID_ARGUMENT,
         "live_job.reconnect_window"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1), stream_key="mine"),
         grpc.StatusCode.INVALID_ARGUMENT, "live_job.stream_key"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1), description="x" * 1025),
         grpc.StatusCode.INVALID_ARGUMENT, "live_job.description"),
    ]
    for spec, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=spec))
        assert e.value.code() == code, field
        assert field in field_violations(e.value), (field, field_violations(e.value))
    for spec, code, why in [
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=LiveInput.SRT)),
         grpc.StatusCode.FAILED_PRECONDITION, "SERVER_TYPE_NOT_AVAILABLE"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1), job_template_id="mp4-h264-720p"),
         grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_NOT_LIVE"),
        (LiveJob(bucket="b", destination="d", input=LiveInput(server_type=1), job_template_id="no-such-template"),
         grpc.StatusCode.NOT_FOUND, "TEMPLATE_NOT_FOUND"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=spec))
        assert (e.value.code(), reason(e.value)) == (code, why)
    await env.create("same/place")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.create("same/place")
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.ALREADY_EXISTS, "DESTINATION_IN_USE")
    for bad in ("", "x" * 300):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=bad))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=str(uuid.uuid4())))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.NOT_FOUND, "LIVE_JOB_NOT_FOUND")


async def test_live_templates_are_for_live_jobs_only(env: Env) -> None:
    (env.root / "media").mkdir(parents=True)
    (env.root / "media" / "x.mp4").write_bytes(b"\0" * 16)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(
            name="e", template_id="hls-live-360p-240p", source_uri="media/x.mp4")))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_IS_LIVE")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", template_id="hls-live-360p-240p"))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_IS_LIVE")
    mixed = mres.JobTemplate(outputs=[
        mres.OutputSpec(name="a", container="hls", video_codec="h264", height=240),
        mres.OutputSpec(name="b", container="mp4", video_codec="h264", height=240)])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=mixed, job_template_id="mixed"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mine = mres.JobTemplate(outputs=[mres.OutputSpec(name="180p", container="hls", video_codec="h264", height=180,
                                                     audio_codec="aac")],
                            segment_duration=duration_pb2.Duration(seconds=1))
    await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=mine, job_template_id="tiny-live"))
    lj = await env.create("tiny", job_template_id="tiny-live")
    assert list(lj.output_manifests) == ["180p"]
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    leased = await env.lease()
    p = json_format.MessageToDict(leased.job.params)
    assert p["segment_seconds"] == 1 and p["renditions"][0]["name"] == "180p"


async def test_list_search_and_both_kinds_of_pages(env: Env) -> None:
    made = [await env.create(f"room-{i}", description=f"{'Keynote' if i % 2 else 'Panel'} stream {i}")
            for i in range(7)]
    page = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(page_size=3, page_index=2))
    assert [x.id for x in page.live_jobs] == [made[3].id, made[2].id, made[1].id]
    info = page.page_info
    assert (info.total_count, info.page_index, info.page_size, info.total_pages, info.has_next_page,
            info.has_previous_page) == (7, 2, 3, 3, True, True)
    assert all(x.stream_key == "" and x.ingest_url == "" for x in page.live_jobs)  # keys hidden by default
    with_keys = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(page_size=1, include_stream_key=True))
    assert with_keys.live_jobs[0].stream_key == made[6].stream_key
    ids: list[str] = []
    token = ""
    while True:
        p = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(page_size=2, page_token=token))
        ids += [x.id for x in p.live_jobs]
        assert p.total_size == 7
        token = p.next_page_token
        if not token:
            break
    assert ids == [m.id for m in reversed(made)]
    found = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search="KEYNOTE"))
    assert sorted(x.destination for x in found.live_jobs) == ["room-1", "room-3", "room-5"]
    assert (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search="room-4"))).total_size == 1
    assert (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search=made[0].name.upper()))).total_size == 1
    assert (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search=made[0].stream_key))).total_size == 0
    assert (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search="%"))).total_size == 0
    assert (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(states=[S.OFFLINE]))).total_size == 7
    for bad in (lsvc.ListLiveJobsRequest(search="x" * 257), lsvc.ListLiveJobsRequest(page_size=101),
                lsvc.ListLiveJobsRequest(page_index=2, page_token=token or "abc"),
                lsvc.ListLiveJobsRequest(page_index=5000, page_size=100)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.live.ListLiveJobs(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_session_from_start_to_stop_with_every_state_in_watch_jobs(env: Env) -> None:
    lj = await env.create()
    resp = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert resp.online and resp.live_job.state == S.STARTING and resp.live_job.session_count == 1
    assert resp.playback_path_url == lj.playback_url
    again = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert again.live_job.current_job_id == resp.live_job.current_job_id  # already heading online: unchanged
    leased = await env.lease()
    job = leased.job
    assert job.id == resp.live_job.current_job_id and job.metadata["live_job_id"] == lj.id
    assert lj.stream_key not in job.SerializeToString().decode("utf-8", "replace")  # the key is not in the job
    params = json_format.MessageToDict(job.params)
    assert params["output_dir"] == "live/events/studio-a/main" and params["segment_seconds"] == 2
    assert [r["name"] for r in params["renditions"]] == ["360p", "240p"]
    r = await env.report(leased, S.AWAITING_INPUT)
    assert r.live_state == S.AWAITING_INPUT and not r.stop_requested and r.reconnect_window.seconds == 60
    # A wrong key is refused and logged; the right one is let in.
    refs = [wsvc.LeaseRef(job_id=job.id, lease_token=leased.lease_token)]
    bad = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(
        stream_key=str(uuid.uuid4()), leases=refs, app="live", protocol="rtmp", peer="127.0.0.1:5000"))
    assert not bad.allowed and bad.reason == "UNKNOWN_STREAM_KEY"
    ok = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.stream_key, leases=refs))
    assert ok.allowed and ok.job_id == job.id and ok.live_job_id == lj.id
    stats = lres.LiveStatistics(width=320, height=180, frame_rate=15, video_codec_id=7, audio_codec_id=10,
                                audio_sample_rate=48000, audio_sample_size=16, audio_channels=2, stereo=True,
                                encoder="Lavf62.12.102", video_data_rate=400, audio_data_rate=64)
    await env.report(leased, S.LIVE, statistics=stats, outputs=[
        lres.LiveOutput(output_id=1, counter=3), lres.LiveOutput(output_id=2, counter=3)])
    got = await env.live.GetLiveStatistics(lsvc.GetLiveStatisticsRequest(live_job_id=lj.id))
    assert (got.width, got.height, got.frame_rate, got.video_codec_id, got.audio_codec_id, got.stereo,
            got.encoder) == (320, 180, 15, 7, 10, True, "Lavf62.12.102") and got.HasField("update_time")
    outs = (await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))).outputs
    assert [(o.status, o.counter, o.lock_key) for o in outs] == [
        (lres.LiveOutput.ENCODING, 3, "host1/live/0")] * 2
    await env.report(leased, outputs=[lres.LiveOutput(output_id=1, counter=2)])  # counters never go back
    outs = (await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))).outputs
    assert outs[0].counter == 3
    busy = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.stream_key, leases=refs))
    assert not busy.allowed and busy.reason == "NOT_AWAITING_INPUT"  # one publisher at a time
    await env.report(leased, S.RECONNECTING)
    await env.report(leased, S.LIVE)
    stop = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    assert not stop.online and stop.live_job.state == S.STOPPING
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "LIVE_JOB_STOPPING")
    r = await env.report(leased)
    assert r.stop_requested
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.report(leased, S.LIVE)
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_LIVE_TRANSITION")
    result = struct_pb2.Struct()
    result.update({"duration_s": 12.5, "manifests": dict(lj.output_manifests)})
    await env.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=job.id, lease_token=leased.lease_token,
                                                          result=result))
    done = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert done.state == S.STOPPED and done.HasField("end_time") and done.resource_name == "host1/live/0 live-worker-1"
    outs = (await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))).outputs
    assert {(o.status, o.progress) for o in outs} == {(lres.LiveOutput.STOPPED, 100)}
    timings = await env.timings(lj.id)
    assert [(t.child_status, S.Name(t.status)) for t in timings] == [
        ("CREATED", "OFFLINE"), ("START_REQUESTED", "STARTING"), ("WORKER_LEASED", "STARTING"),
        ("WORKER_READY", "AWAITING_INPUT"), ("PUBLISH_REJECTED", "AWAITING_INPUT"), ("CONNECTED", "LIVE"),
        ("PUBLISH_REJECTED", "LIVE"), ("DISCONNECTED", "RECONNECTING"), ("RECONNECTED", "LIVE"),
        ("STOP_REQUESTED", "STOPPING"), ("STOPPED", "STOPPED")]
    assert [t.sequence for t in timings] == sorted(t.sequence for t in timings)
    assert "12.5 s" in timings[-1].message_comment
    # WatchJobs carried every live state of the session, in order.
    states: list[str] = []
    async for resp2 in env.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=1, types=["LIVE_ENCODE"]),
                                          timeout=10):
        for ev in resp2.events:
            d = json_format.MessageToDict(ev.job.progress_details)
            if d.get("live_state") and (not states or states[-1] != d["live_state"]):
                states.append(d["live_state"])
        if resp2.events and resp2.events[-1].job.state == Job.SUCCEEDED:
            break
    assert states == ["STARTING", "AWAITING_INPUT", "LIVE", "RECONNECTING", "LIVE", "STOPPING", "STOPPED"]


async def test_a_lost_worker_recovers_and_a_scheduled_start_waits(env: Env) -> None:
    lj = await env.create()
    start = timestamp_pb2.Timestamp()
    start.FromMicroseconds(env.clock.now + 60_000_000)
    finish = timestamp_pb2.Timestamp()
    finish.FromMicroseconds(env.clock.now + 3_600_000_000)
    resp = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(
        stream_key=lj.stream_key, online=True, start_time=start, finish_time=finish))
    assert resp.live_job.state == S.STARTING and resp.live_job.finish_time == finish
    assert resp.live_job.start_time == start
    none = await env.workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["LIVE_ENCODE"], no_wait=True))
    assert not none.jobs  # not before its start time
    env.clock.advance(61)
    first = await env.lease(lease_s=10)
    r = await env.report(first, S.AWAITING_INPUT)
    assert r.finish_time == finish
    await env.report(first, S.LIVE)
    env.clock.advance(11)  # the worker died: its lease runs out
    await env.workers.CleanExpiredLeases(wsvc.CleanExpiredLeasesRequest())
    got = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert got.state == S.RECOVERING
    with pytest.raises(grpc.aio.AioRpcError) as e:  # the old worker is fenced off
        await env.report(first, S.LIVE)
    assert e.value.code() == grpc.StatusCode.ABORTED
    second = await env.lease()
    assert second.job.id == first.job.id and second.lease_token != first.lease_token
    await env.report(second, S.AWAITING_INPUT)
    assert (await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))).state == S.AWAITING_INPUT
    children = [t.child_status for t in await env.timings(lj.id)]
    assert children[-4:] == ["CONNECTED", "WORKER_LOST", "WORKER_LEASED", "WORKER_READY"]
    # A stop while no worker holds the session ends it at once.
    env.clock.advance(31)
    await env.workers.CleanExpiredLeases(wsvc.CleanExpiredLeasesRequest())
    stop = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    assert stop.live_job.state == S.STOPPED and not stop.online
    job = await env.jobs.GetJob(svc.GetJobRequest(id=first.job.id))
    assert job.state == Job.ABORTED
    # Starting again is a new session with a new job.
    again = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert again.live_job.session_count == 2 and again.live_job.current_job_id != first.job.id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key="x" * 300, online=True))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key="not-a-key-of-anything", online=True))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "not-a-key" not in (e.value.details() or "")
    past = timestamp_pb2.Timestamp()
    past.FromMicroseconds(env.clock.now - 1_000_000)
    other = await env.create("other")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=other.stream_key, online=True,
                                                                   finish_time=past))
    assert "finish_time" in field_violations(e.value)


async def test_key_reset_abort_failure_and_delete(env: Env) -> None:
    lj = await env.create()
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    leased = await env.lease()
    refs = [wsvc.LeaseRef(job_id=leased.job.id, lease_token=leased.lease_token)]
    await env.report(leased, S.AWAITING_INPUT)
    other = await env.create("elsewhere")
    not_here = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=other.stream_key,
                                                                                leases=refs))
    assert not not_here.allowed and not_here.reason == "NOT_STARTED"
    assert [t.child_status for t in await env.timings(other.id)][-1] == "PUBLISH_REJECTED"
    await env.report(leased, S.LIVE)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.ResetStreamKey(lsvc.ResetStreamKeyRequest(live_job_id=lj.id))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "LIVE_JOB_LIVE")
    r0 = await env.report(leased)
    reset = await env.live.ResetStreamKey(lsvc.ResetStreamKeyRequest(live_job_id=lj.id, force=True))
    assert reset.stream_key != lj.stream_key and reset.ingest_url.endswith(reset.stream_key)
    r1 = await env.report(leased, S.RECONNECTING)
    assert r1.key_generation == r0.key_generation + 1  # the worker drops the publisher on a new generation
    old = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.stream_key, leases=refs))
    assert not old.allowed and old.reason == "STREAM_KEY_RESET"
    for _ in range(3):  # a publisher retrying: logged once a second, not every time
        await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=str(uuid.uuid4()), leases=refs))
    children = [t.child_status for t in await env.timings(lj.id)]
    assert children.count("PUBLISH_REJECTED") == 1 and "KEY_RESET" in children
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    new = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=reset.stream_key, leases=refs))
    assert new.allowed
    # AbortJob on the session: STOPPING, then the worker acknowledges: STOPPED.
    await env.jobs.AbortJob(svc.AbortJobRequest(id=leased.job.id, reason="operator pulled it"))
    assert (await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))).state == S.STOPPING
    r = await env.report(leased)
    assert r.cancel_requested and r.stop_requested
    await env.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    got = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert got.state == S.STOPPED
    assert (await env.timings(lj.id))[-1].message_comment == "operator pulled it"
    # A session that fails: FAILED with the error, outputs FAILED.
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=reset.stream_key, online=True))
    leased2 = await env.lease()
    from google.rpc import status_pb2
    await env.workers.FailJob(wsvc.FailJobRequest(job_id=leased2.job.id, lease_token=leased2.lease_token,
                                                  error=status_pb2.Status(code=3, message="encoder crashed")))
    failed = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert failed.state == S.FAILED and "encoder crashed" in failed.error.message
    outs = (await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))).outputs
    assert {o.status for o in outs} == {lres.LiveOutput.FAILED}
    # Timings of one output keep the live job's own entries too.
    only1 = await env.timings(lj.id, output_id=1)
    assert len(only1) == len(await env.timings(lj.id))
    # Delete: refused while online, forced aborts; allow_missing.
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=reset.stream_key, online=True))
    leased3 = await env.lease()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.DeleteLiveJob(lsvc.DeleteLiveJobRequest(id=lj.id))
    assert (e.value.code(), reason(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "LIVE_JOB_ONLINE")
    await env.live.DeleteLiveJob(lsvc.DeleteLiveJobRequest(id=lj.id, force=True))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await env.jobs.GetJob(svc.GetJobRequest(id=leased3.job.id))).state == Job.ABORTING
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.report(leased3, S.AWAITING_INPUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    await env.live.DeleteLiveJob(lsvc.DeleteLiveJobRequest(id=lj.id, allow_missing=True))


async def test_worker_reports_are_checked(env: Env) -> None:
    lj = await env.create()
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    leased = await env.lease()
    for kw, field in [({"live_state": S.RECOVERING}, "live_state"), ({"child_status": "lower case"}, "child_status"),
                      ({"message": "m" * 1025}, "message"),
                      ({"outputs": [lres.LiveOutput(output_id=1, counter=-1)]}, "outputs[0].counter")]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.workers.ReportLiveStatus(wsvc.ReportLiveStatusRequest(
                job_id=leased.job.id, lease_token=leased.lease_token, **kw))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(e.value), field
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.report(leased, outputs=[lres.LiveOutput(output_id=9, counter=1)])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.report(leased, S.LIVE)  # STARTING -> LIVE skips AWAITING_INPUT
    assert reason(e.value) == "ILLEGAL_LIVE_TRANSITION"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.workers.ReportLiveStatus(wsvc.ReportLiveStatusRequest(job_id=leased.job.id, lease_token="stale"))
    assert e.value.code() == grpc.StatusCode.ABORTED
    for bad in (wsvc.AuthorizePublishRequest(stream_key="k"),
                wsvc.AuthorizePublishRequest(leases=[wsvc.LeaseRef(job_id=leased.job.id, lease_token="t")]),
                wsvc.AuthorizePublishRequest(stream_key="k", peer="p" * 200,
                                             leases=[wsvc.LeaseRef(job_id=leased.job.id, lease_token="t")])):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.workers.AuthorizePublish(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Not this worker's lease: nothing can be authorized through it.
    stolen = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(
        stream_key=lj.stream_key, leases=[wsvc.LeaseRef(job_id=leased.job.id, lease_token="guessed")]))
    assert not stolen.allowed and stolen.reason == "NOT_STARTED"
    await env.report(leased, S.AWAITING_INPUT, child_status="INGEST_READY", message="listening on :1935")
    t = (await env.timings(lj.id))[-1]
    assert (t.child_status, t.message_comment, t.status) == ("INGEST_READY", "listening on :1935", S.AWAITING_INPUT)


class Receiver(http.server.BaseHTTPRequestHandler):
    """A callback receiver on 127.0.0.1: answers 500 to the first POST, 204
    after; every POST goes to `got`."""

    got: "queue.Queue[tuple[int, dict[str, str], bytes]]"
    fail_first = True

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if type(self).fail_first else 204
        type(self).fail_first = False
        type(self).got.put((status, dict(self.headers), body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_callbacks_are_signed_in_order_and_retried(env: Env) -> None:
    Receiver.got = queue.Queue()
    Receiver.fail_first = True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        lj = await env.create("hooked", input=LiveInput(server_type=LiveInput.RTMP, callback_url=url))
        secret = lj.input.callback_secret
        assert len(secret) == 64
        listed = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest())
        assert listed.live_jobs[0].input.callback_secret == ""  # hidden like the key
        first = await asyncio.to_thread(Receiver.got.get, True, 10)
        assert first[0] == 500
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
        env.clock.advance(2)  # the retry of the first is due; the second waits behind it (order)
        posts = [await asyncio.to_thread(Receiver.got.get, True, 10) for _ in range(2)]
        bodies = [json.loads(b) for _s, _h, b in posts]
        assert [b["child_status"] for b in bodies] == ["CREATED", "START_REQUESTED"]
        assert json.loads(first[2])["id"] == bodies[0]["id"]  # the same callback, retried
        assert bodies[1]["status"] == "STARTING" and bodies[1]["live_job_id"] == lj.id and bodies[1]["job_id"]
        for _status, headers, body in posts:
            sig = dict(part.split("=", 1) for part in headers["Mediajobs-Signature"].split(","))
            want = hmac.new(secret.encode(), f"{sig['t']}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(sig["v1"], want)
            assert headers["Content-Type"] == "application/json"
    finally:
        httpd.shutdown()


def test_callbacks_to_private_addresses_need_the_flag() -> None:
    from mediajobs.server.live_callbacks import CallbackRefused, check_destination

    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/latest"):
        with pytest.raises(CallbackRefused):
            check_destination(url, allow_private=False)
        check_destination(url, allow_private=True)


async def test_clips_are_checked_queued_and_follow_their_job(env: Env) -> None:
    lj = await env.create()
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromMicroseconds(env.clock.now - 60_000_000)
    end.FromMicroseconds(env.clock.now - 30_000_000)
    for clip, field in [(lres.LiveClip(), "clip.start_time"), (lres.LiveClip(start_time=end, end_time=start),
                                                                "clip.end_time"),
                        (lres.LiveClip(start_time=start, end_time=end, rendition="1080p"), "clip.rendition"),
                        (lres.LiveClip(start_time=start, end_time=end, mp4="x.mp4"), "clip.mp4")]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await env.live.CreateLiveClip(lsvc.CreateLiveClipRequest(live_job_id=lj.id, clip=clip))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(e.value), field
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.CreateLiveClip(lsvc.CreateLiveClipRequest(
            live_job_id=str(uuid.uuid4()), clip=lres.LiveClip(start_time=start, end_time=end)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    req = lsvc.CreateLiveClipRequest(live_job_id=lj.name, clip=lres.LiveClip(start_time=start, end_time=end),
                                     request_id="clip-1")
    c = await env.live.CreateLiveClip(req)
    assert (await env.live.CreateLiveClip(req)).id == c.id
    assert c.rendition == "360p" and c.state == lres.LiveClip.PENDING
    got = await env.workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["LIVE_CLIP"], max_jobs=1, no_wait=True))
    job = got.jobs[0].job
    assert job.id == c.job_id
    params = json_format.MessageToDict(job.params)
    assert params["playlist"] == "live/events/studio-a/main/360p/index.m3u8"
    assert params["output_dir"] == f"live/events/studio-a/main/clips/{c.id}"
    assert (await env.live.GetLiveClip(lsvc.GetLiveClipRequest(id=c.id))).state == lres.LiveClip.RUNNING
    from google.rpc import status_pb2
    await env.workers.FailJob(wsvc.FailJobRequest(job_id=job.id, lease_token=got.jobs[0].lease_token,
                                                  error=status_pb2.Status(code=9, message="nothing in the window")))
    failed = await env.live.GetLiveClip(lsvc.GetLiveClipRequest(id=c.id))
    assert failed.state == lres.LiveClip.FAILED and "nothing in the window" in failed.error.message
    assert (await env.timings(lj.id))[-1].child_status == "CLIP_FAILED"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.live.GetLiveClip(lsvc.GetLiveClipRequest(id="01M8SB5581KXZ3YVM2NAQTGBC0"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await env.live.ListLiveClips(lsvc.ListLiveClipsRequest(live_job_id=lj.id))
    assert [x.id for x in listed.clips] == [c.id]


def test_a_database_made_before_backup_keys_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    from mediajobs.server.store import Store

    db = tmp_path / "old.db"
    Store(str(db)).open().close()
    con = sqlite3.connect(db)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE "
                               "'%backup_key_hash%'").fetchall():
        con.execute(f"DROP INDEX {name}")
    con.execute("ALTER TABLE live_jobs DROP COLUMN backup_key_hash")
    con.commit()
    assert "backup_key_hash" not in {r[1] for r in con.execute("PRAGMA table_info(live_jobs)")}
    con.close()
    Store(str(db)).open().close()
    con = sqlite3.connect(db)
    assert "backup_key_hash" in {r[1] for r in con.execute("PRAGMA table_info(live_jobs)")}
    con.close()


async def test_standard_input_has_a_backup_key_that_a_second_publisher_uses(env: Env) -> None:
    lj = await env.create("redundant", input=LiveInput(server_type=LiveInput.RTMP, input_class=LiveInput.STANDARD))
    assert lj.backup_stream_key and lj.backup_stream_key != lj.stream_key
    assert lj.backup_ingest_url == f"rtmp://live.example.com:1935/live/{lj.backup_stream_key}"
    assert [(o.value, o.enabled) for o in lj.input.input_class_options] == [("SINGLE", False), ("STANDARD", True)]
    listed = (await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest(search="redundant"))).live_jobs[0]
    assert listed.backup_stream_key == "" and listed.backup_ingest_url == ""
    # Either key starts and stops it.
    started = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.backup_stream_key,
                                                                         online=True))
    assert started.live_job.state == S.STARTING
    leased = await env.lease()
    refs = [wsvc.LeaseRef(job_id=leased.job.id, lease_token=leased.lease_token)]
    await env.report(leased, S.AWAITING_INPUT)
    primary = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.stream_key, leases=refs))
    assert primary.allowed and not primary.backup
    await env.report(leased, S.LIVE)
    backup = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.backup_stream_key,
                                                                             leases=refs))
    assert backup.allowed and backup.backup  # a STANDARD job takes its backup while LIVE
    await env.report(leased, child_status="FAILOVER_TO_BACKUP", message="primary dropped")
    reset = await env.live.ResetStreamKey(lsvc.ResetStreamKeyRequest(live_job_id=lj.id, force=True))
    assert reset.backup_stream_key not in ("", lj.backup_stream_key)
    old = await env.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.backup_stream_key,
                                                                          leases=refs))
    assert not old.allowed
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.create("pulled-standard", input=LiveInput(server_type=LiveInput.HLS, input_class=LiveInput.STANDARD,
                                                            file_path="in/index.m3u8"))
    assert "live_job.input.input_class" in field_violations(e.value)
