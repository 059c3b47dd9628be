"""Client payloads over a real channel (server/payloads.py): nesting, kind-less
Values and non-finite numbers refused in every RPC that takes a Struct; the
largest accepted job read back by a client with gRPC's default 4 MiB receive
limit in every form the API returns it; error messages that echo only a
short prefix of the input; and payloads stored by older versions made
readable at start-up (server/store/sanitize.py)."""
from __future__ import annotations

import asyncio
import json
import shutil
import struct
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from conftest import error_info, field_violations, fresh_pg_url, start_app
from mediajobs.server import cue_points as cp_mod
from mediajobs.server import payloads
from mediajobs.server.app import App
from mediajobs.server.errors import clip
from mediajobs.server.store import sanitize
from mediajobs.server.store.db import open_database
from mediajobs.server.store.models import create_schema, models_for
from mediajobs.server.watch import BUFFER_SIZE
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc as wsvc_grpc

Job = res.Job
MiB = payloads.MiB
ld = payloads.length_delimited
DEPTH = payloads.MAX_PAYLOAD_DEPTH
JOB_ID = "01HA255YE6H6DEETJ5M6595ZDA"
TOKEN = "0" * 32
FIVE_MIB = 5 * MiB
BIG_RECEIVE = 16 * MiB


# -- payloads built as bytes ------------------------------------------------------------


def nested_object_bytes(levels: int) -> bytes:
    """A serialized Struct `{"a": {"a": ... {"leaf": 1}}}` of `levels` object
    levels, built as bytes: Python can neither build nor parse one much past
    30 levels (upb stops at 100 nested messages, and each level costs 3)."""
    one = b"\x11" + struct.pack("<d", 1.0)  # Value.number_value (field 2, fixed64)
    inner = ld(1, ld(1, b"leaf") + ld(2, one))  # Struct.fields entry {1: key, 2: Value}
    for _ in range(levels - 1):
        inner = ld(1, ld(1, b"a") + ld(2, ld(5, inner)))  # {"a": Value.struct_value}
    return inner


def struct_of(**fields: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


def kindless_bytes() -> bytes:
    """{"x": {"y": [1, <a Value with no kind>]}}"""
    s = struct_of(x={"y": [1]})
    s["x"]["y"].values.add()
    return s.SerializeToString()


# name -> (serialized Struct, path below the field, what the violation says)
BAD_PAYLOADS: dict[str, tuple[bytes, str, str]] = {
    "one level past the limit": (nested_object_bytes(DEPTH + 1), ".a" * DEPTH, f"nested {DEPTH + 1} levels deep"),
    "far past Python's own parse limit": (nested_object_bytes(200), ".a" * DEPTH, f"nested {DEPTH + 1} levels deep"),
    "a Value with no kind": (kindless_bytes(), ".x.y[1]", "no kind set"),
    "NaN": (struct_of(outputs=[{}, {}, {"size": float("nan")}]).SerializeToString(), ".outputs[2].size", "not a finite number"),
    "-Infinity": (struct_of(gain=float("-inf")).SerializeToString(), ".gain", "not a finite number"),
}


def status_with_struct_detail(struct_bytes: bytes) -> bytes:
    """A google.rpc.Status whose details[0] is an Any holding `struct_bytes` as a Struct."""
    detail = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct").SerializeToString() + ld(2, struct_bytes)
    return status_pb2.Status(code=13, message="boom").SerializeToString() + ld(3, detail)


def _create(payload: bytes) -> bytes:
    return svc.CreateJobRequest(type="T").SerializeToString() + ld(4, payload)


def _completion(payload: bytes | None = None) -> bytes:
    base = wsvc.CompleteJobRequest(job_id=JOB_ID, lease_token=TOKEN).SerializeToString()
    return base + (ld(3, payload) if payload is not None else b"")


# rpc -> (method, request bytes around a Struct, the violation's field prefix)
STRUCT_RPCS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "CreateJob": ("/mediajobs.v1.JobService/CreateJob", _create, "params"),
    "BatchCreateJobs": ("/mediajobs.v1.JobService/BatchCreateJobs",
                        lambda s: ld(1, svc.CreateJobRequest(type="T").SerializeToString()) + ld(1, _create(s)),
                        "requests[1].params"),
    "Heartbeat": ("/mediajobs.v1.WorkerService/Heartbeat",
                  lambda s: wsvc.HeartbeatRequest(job_id=JOB_ID, lease_token=TOKEN).SerializeToString() + ld(5, s),
                  "details"),
    "CompleteJob": ("/mediajobs.v1.WorkerService/CompleteJob", _completion, "result"),
    "CompleteJobs": ("/mediajobs.v1.WorkerService/CompleteJobs",
                     lambda s: ld(1, _completion()) + ld(1, _completion(s)), "completions[1].result"),
    "FailJob": ("/mediajobs.v1.WorkerService/FailJob",
                lambda s: wsvc.FailJobRequest(job_id=JOB_ID, lease_token=TOKEN).SerializeToString()
                + ld(3, status_with_struct_detail(s)),
                "error.details[0]"),
}


async def call_raw(channel: grpc.aio.Channel, method: str, request: bytes) -> bytes:
    """Send already-serialized request bytes; return the reply's bytes."""
    reply: bytes = await channel.unary_unary(method)(request)
    return reply


# -- clients --------------------------------------------------------------------------------


@asynccontextmanager
async def client(app: App, receive_limit: int | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """A channel with gRPC's default 4 MiB receive limit, or `receive_limit`."""
    options = [] if receive_limit is None else [("grpc.max_receive_message_length", receive_limit)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as ch:
        yield ch


async def watch(ch: grpc.aio.Channel, request: svc.WatchJobsRequest, *, until_revision: int = 0,
                until_snapshot: bool = False) -> list[res.JobEvent]:
    """The events of a WatchJobs stream, read until a message reaches
    `until_revision` or the snapshot is complete."""
    request.progress_interval.CopyFrom(duration_pb2.Duration(nanos=100_000_000))
    events: list[res.JobEvent] = []

    async def read() -> None:
        call = svc_grpc.JobServiceStub(ch).WatchJobs(request)
        try:
            async for msg in call:
                events.extend(msg.events)
                if until_snapshot and msg.progress.snapshot_complete:
                    return
                if until_revision and msg.revision >= until_revision:
                    return
        finally:
            call.cancel()

    await asyncio.wait_for(read(), 120)
    return events


# -- 1. one validator, every RPC that takes a Struct -------------------------------------


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
async def test_bad_payloads_are_refused_with_their_path_in_every_rpc(channel: grpc.aio.Channel, payload: str) -> None:
    struct_bytes, path, says = BAD_PAYLOADS[payload]
    for rpc, (method, build, field) in STRUCT_RPCS.items():
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call_raw(channel, method, build(struct_bytes))
        err = e.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, err.code(), err.details())
        assert error_info(err).reason == "INVALID_ARGUMENT", rpc
        violations = field_violations(err)
        assert says in violations.get(field + path, ""), (rpc, violations)
        assert len(err.details() or "") < 1024, rpc
    # Nothing was created along the way.
    listed = await svc_grpc.JobServiceStub(channel).ListJobs(svc.ListJobsRequest())
    assert listed.total_size == 0


async def test_error_details_of_types_clients_cannot_resolve_are_refused(channel: grpc.aio.Channel) -> None:
    error = status_pb2.Status(code=13, message="boom")
    error.details.add().Pack(error_details_pb2.ErrorInfo(reason="DISK", domain="example.com"))  # fine
    error.details.add(type_url="type.googleapis.com/acme.internal.Secret", value=b"\x08\x01")
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.seconds = 10**12  # past what JSON (and every runtime) can write as a Duration
    error.details.add().Pack(retry)
    error.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")
    request = wsvc.FailJobRequest(job_id=JOB_ID, lease_token=TOKEN, error=error)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await wsvc_grpc.WorkerServiceStub(channel).FailJob(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(e.value)
    assert set(violations) == {"error.details[1]", "error.details[2]", "error.details[3]"}, violations
    assert "'acme.internal.Secret' cannot be resolved by clients" in violations["error.details[1]"]
    assert "google.rpc.RetryInfo that JSON cannot hold" in violations["error.details[2]"]
    assert "not a valid serialized google.rpc.ErrorInfo" in violations["error.details[3]"]


async def test_payloads_at_the_depth_limit_are_accepted_and_every_reader_parses_them(channel: grpc.aio.Channel) -> None:
    at_limit = struct_pb2.Struct.FromString(nested_object_bytes(DEPTH))
    jobs, workers = svc_grpc.JobServiceStub(channel), wsvc_grpc.WorkerServiceStub(channel)
    ok = await jobs.CreateJob(svc.CreateJobRequest(type="T", params=at_limit))
    failing = await jobs.CreateJob(svc.CreateJobRequest(type="T", params=at_limit))
    leased = {lj.job.id: lj for lj in (await workers.AcquireJobs(
        wsvc.AcquireJobsRequest(job_types=["T"], max_jobs=2, no_wait=True))).jobs}
    await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=ok.id, lease_token=leased[ok.id].lease_token,
                                                  progress=50, details=at_limit))
    done = await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=ok.id, lease_token=leased[ok.id].lease_token,
                                                             result=at_limit))
    error = status_pb2.Status(code=13, message="boom")
    error.details.add().Pack(at_limit)
    failed = await workers.FailJob(wsvc.FailJobRequest(job_id=failing.id, lease_token=leased[failing.id].lease_token,
                                                       error=error))
    assert done.state == Job.SUCCEEDED and failed.state == Job.FAILED
    # Replaying everything parses in Python (upb, the strictest runtime here),
    # and every job can be written as JSON.
    events = await watch(channel, svc.WatchJobsRequest(start_revision=1), until_revision=failed.revision)
    assert [e.revision for e in events] == list(range(1, failed.revision + 1))
    for job in (done, failed, *(e.job for e in events)):
        json.loads(json_format.MessageToJson(job))
    assert events[-1].job.error.details[0].type_url.endswith("google.protobuf.Struct")


# -- 2. the largest accepted job, read back by a default client ------------------------------


def filled(key: str, limit: int) -> struct_pb2.Struct:
    """A Struct {key: "xxx..."} of just under `limit` bytes serialized."""
    s = struct_of(**{key: ""})
    s[key] = "x" * (limit - s.ByteSize() - 4)
    while s.ByteSize() > limit:
        s[key] = s[key][:-1]
    assert limit - 8 <= s.ByteSize() <= limit
    return s


def largest_metadata() -> dict[str, str]:
    """64 entries of 3 + 4093 bytes: exactly MAX_METADATA_BYTES."""
    per_entry = payloads.MAX_METADATA_BYTES // payloads.MAX_METADATA_ENTRIES
    return {f"k{i:02d}": "m" * (per_entry - 3) for i in range(payloads.MAX_METADATA_ENTRIES)}


async def test_the_largest_job_reads_back_with_the_default_4_mib_limit(db_url: str) -> None:
    app = await start_app(db_url)
    try:
        async with client(app) as small, client(app, BIG_RECEIVE) as big:
            jobs, workers = svc_grpc.JobServiceStub(small), wsvc_grpc.WorkerServiceStub(small)
            # Three of the largest jobs, with small ones between them.
            kinds = ["large", "small", "small", "large", "small", "large"]
            ids = []
            for kind in kinds:
                req = svc.CreateJobRequest(type="BIG")
                if kind == "large":
                    req.params.CopyFrom(filled("input", payloads.MAX_PARAMS_BYTES))
                    req.metadata.update(largest_metadata())
                ids.append((await jobs.CreateJob(req)).id)
            large = {i for i, kind in zip(ids, kinds) if kind == "large"}

            # AcquireJobs stops at the message budget: not all six at once.
            first = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["BIG"], max_jobs=100, no_wait=True))
            second = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["BIG"], max_jobs=100, no_wait=True))
            assert 2 <= len(first.jobs) < len(ids) and len(first.jobs) + len(second.jobs) == len(ids)
            assert first.ByteSize() <= payloads.MAX_MESSAGE_BYTES
            tokens = {lj.job.id: lj.lease_token for lj in [*first.jobs, *second.jobs]}

            for job_id in large:
                await workers.Heartbeat(wsvc.HeartbeatRequest(
                    job_id=job_id, lease_token=tokens[job_id], progress=90,
                    message="m" * payloads.MAX_PROGRESS_MESSAGE_CHARS,
                    details=filled("frames", payloads.MAX_PROGRESS_DETAILS_BYTES)))
            results = {i: filled("output", payloads.MAX_RESULT_BYTES) if i in large else struct_of(ok=True) for i in ids}
            completed = await workers.CompleteJobs(wsvc.CompleteJobsRequest(completions=[
                wsvc.CompleteJobRequest(job_id=i, lease_token=tokens[i], result=results[i]) for i in ids]))
            assert [r.job.state for r in completed.results] == [Job.SUCCEEDED] * len(ids)
            # The reply leaves out what the worker already has, keeps the results.
            assert all(r.job.result == results[r.job.id] and not r.job.HasField("params") and not r.job.metadata
                       for r in completed.results)
            last_revision = max(r.job.revision for r in completed.results)

            for ch in (small, big):
                reader = svc_grpc.JobServiceStub(ch)
                for job_id in large:
                    job = await reader.GetJob(svc.GetJobRequest(id=job_id, include_metadata=True))
                    assert job.ByteSize() > 2 * MiB and job.result == results[job_id]
                    assert dict(job.metadata) == largest_metadata() and len(job.progress_message) == 1024
                    assert job.ByteSize() <= payloads.MAX_JOB_BYTES

                listed: list[str] = []
                token, pages = "", 0
                while True:
                    page = await reader.ListJobs(svc.ListJobsRequest(
                        types=["BIG"], page_size=1000, include_metadata=True, page_token=token))
                    assert page.jobs and page.ByteSize() <= payloads.MAX_MESSAGE_BYTES
                    listed += [j.id for j in page.jobs]
                    pages += 1
                    token = page.next_page_token
                    if not token:
                        break
                assert listed == ids and pages >= 3  # every job once, in order, over several pages

                snapshot = await watch(ch, svc.WatchJobsRequest(types=["BIG"], send_initial_snapshot=True),
                                       until_snapshot=True)
                assert [e.job.id for e in snapshot] == ids
                assert all(e.job.result == results[e.job.id] for e in snapshot)

                replay = await watch(ch, svc.WatchJobsRequest(types=["BIG"], start_revision=1),
                                     until_revision=last_revision)
                final = {e.job.id: e.job for e in replay}
                assert set(final) == set(ids)
                assert all(j.state == Job.SUCCEEDED and j.result == results[j.id] for j in final.values())
    finally:
        await app.stop(None)


async def test_a_watch_replay_from_the_log_fits_a_default_client(app: App) -> None:
    """Replaying from revision 1 once the newest BUFFER_SIZE events have
    pushed the large ones out of memory: the catch-up reads the log
    (server/watch.py) and must bound its messages as well."""
    async with client(app) as small:
        jobs = svc_grpc.JobServiceStub(small)
        large = [(await jobs.CreateJob(svc.CreateJobRequest(
            type="BIG", params=filled("input", payloads.MAX_PARAMS_BYTES), metadata=largest_metadata()))).id
            for _ in range(4)]  # four CREATED events of 1.3 MiB in a row
        batch = svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="SMALL")] * 1000)
        for _ in range(BUFFER_SIZE // 1000 + 1):
            await jobs.BatchCreateJobs(batch)
        events = await watch(small, svc.WatchJobsRequest(types=["BIG"], start_revision=1), until_revision=4)
        assert [e.job.id for e in events] == large


async def test_batches_whose_reply_would_not_fit_are_refused(channel: grpc.aio.Channel) -> None:
    jobs = svc_grpc.JobServiceStub(channel)
    half = filled("input", payloads.MAX_PARAMS_BYTES // 2)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(
            requests=[svc.CreateJobRequest(type="T", params=half)] * 7))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "so that a client with gRPC's default 4 MiB receive limit can read it" in field_violations(e.value)["requests"]
    assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 0  # all or nothing
    created = await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(
        requests=[svc.CreateJobRequest(type="T", params=half)] * 5))
    assert len(created.jobs) == 5 and created.ByteSize() <= payloads.MESSAGE_BUDGET_BYTES


@pytest.mark.parametrize("field,request_", [
    ("params", svc.CreateJobRequest(type="T", params=struct_of(blob="x" * payloads.MAX_PARAMS_BYTES))),
    ("metadata", svc.CreateJobRequest(type="T", metadata={f"k{i}": "é" * 4000 for i in range(40)})),
])
async def test_create_limits_name_the_limit(channel: grpc.aio.Channel, field: str, request_: svc.CreateJobRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await svc_grpc.JobServiceStub(channel).CreateJob(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most" in field_violations(e.value)[field]


async def test_worker_payload_limits(channel: grpc.aio.Channel) -> None:
    workers = wsvc_grpc.WorkerServiceStub(channel)
    cases = [
        (workers.Heartbeat, wsvc.HeartbeatRequest(job_id=JOB_ID, lease_token=TOKEN,
                                                   details=filled("d", payloads.MAX_PROGRESS_DETAILS_BYTES + 100)), "details"),
        (workers.Heartbeat, wsvc.HeartbeatRequest(job_id=JOB_ID, lease_token=TOKEN, message="m" * 1025), "message"),
        (workers.CompleteJob, wsvc.CompleteJobRequest(job_id=JOB_ID, lease_token=TOKEN,
                                                      result=filled("r", payloads.MAX_RESULT_BYTES + 100)), "result"),
        (workers.FailJob, wsvc.FailJobRequest(job_id=JOB_ID, lease_token=TOKEN,
                                              error=status_pb2.Status(code=2, message="e" * payloads.MAX_ERROR_BYTES)), "error"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await method(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert "at most" in field_violations(e.value).get(field, ""), (field, field_violations(e.value))


async def test_template_pages_stop_at_the_message_budget(app: App) -> None:
    async with client(app) as small:
        media = msvc_grpc.MediaServiceStub(small)
        output = mres.OutputSpec(name="720p", container="mp4", video_codec="h264", height=720)
        made = []
        for i in range(14):  # 14 templates of 256 KiB of labels: more than one page can hold
            t = mres.JobTemplate(outputs=[output], labels=largest_metadata())
            made.append((await media.CreateJobTemplate(
                msvc.CreateJobTemplateRequest(job_template=t, job_template_id=f"big-{i:02d}"))).id)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await media.CreateJobTemplate(msvc.CreateJobTemplateRequest(
                job_template=mres.JobTemplate(outputs=[output], labels={"k": "v" * 5000}), job_template_id="too-long"))
        assert "at most 4096 characters" in field_violations(e.value)["job_template.labels['k']"]
        listed, token, pages = [], "", 0
        while True:
            page = await media.ListJobTemplates(msvc.ListJobTemplatesRequest(page_size=1000, page_token=token))
            listed += [t.id for t in page.job_templates if not t.built_in]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert listed == made and pages >= 2


# -- cue points: export pages and import replies fit a default client ------------------------


async def test_cue_point_export_pages_and_import_replies_fit_a_default_client(app: App) -> None:
    async with client(app) as small:
        media = msvc_grpc.MediaServiceStub(small)
        entry = (await media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="clip")))).id
        body = "".join(f"<{el}>" + "t" * 4096 + f"</{el}>" for el in ("sceneText", "description", "partnerData"))
        scenes = "".join(f'<scene-annotation entryId="{entry}"><sceneStartTime>{i}</sceneStartTime>{body}'
                         "</scene-annotation>" for i in range(600))
        xml = f"<scenes>{scenes}</scenes>".encode()
        assert payloads.MAX_MESSAGE_BYTES < len(xml) <= cp_mod.MAX_DOCUMENT_BYTES
        reply = await media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=xml))
        # The full reply would pass 4 MiB: the cue points come in short form.
        assert len(reply.cue_points) == 600 and not reply.errors
        assert all(cp.id and cp.entry_id == entry and not cp.text for cp in reply.cue_points)
        assert [cp.start_time_ms for cp in reply.cue_points] == list(range(600))

        pages, token = [], ""
        while True:
            page = await media.ExportCuePoints(msvc.ExportCuePointsRequest(page_size=10_000, page_token=token))
            assert len(page.xml) <= cp_mod.MAX_EXPORT_DOCUMENT_BYTES
            pages.append(page)
            token = page.next_page_token
            if not token:
                break
        assert len(pages) >= 2 and sum(p.count for p in pages) == 600
        again = await media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=pages[0].xml))
        assert len(again.cue_points) == pages[0].count and not again.errors

        # So many refused items that even the short reply would not fit: refused as a whole.
        name = "日" * 64
        refused = "".join(f'<{name} entryId="{"本" * 100}"/>' for _ in range(10_000))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=f"<scenes>{refused}</scenes>".encode()))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "even with every cue point and error in short form" in field_violations(e.value)["xml"]


# -- 3. error messages echo a short prefix ------------------------------------------------------


async def test_errors_echo_only_a_short_prefix_of_huge_input(app: App) -> None:
    huge = "x" * FIVE_MIB
    async with client(app) as ch:
        jobs, media = svc_grpc.JobServiceStub(ch), msvc_grpc.MediaServiceStub(ch)
        workers = wsvc_grpc.WorkerServiceStub(ch)
        calls = [
            ("type", jobs.CreateJob(svc.CreateJobRequest(type=huge))),
            ("template_id", jobs.CreateJob(svc.CreateJobRequest(type="T", template_id=huge))),
            (f"metadata[{clip(huge, 32)}]", jobs.CreateJob(svc.CreateJobRequest(type="T", metadata={huge: "v"}))),
            ("id", jobs.GetJob(svc.GetJobRequest(id=huge))),
            ("order_by", jobs.ListJobs(svc.ListJobsRequest(order_by=huge))),
            ("id", media.GetJobTemplate(msvc.GetJobTemplateRequest(id=huge))),
            ("entry.template_id", media.CreateEntry(msvc.CreateEntryRequest(
                entry=mres.Entry(name="n", source_uri="in.mov", template_id=huge)))),
            ("local_path", workers.CheckFileExists(wsvc.CheckFileExistsRequest(local_path="/" + huge))),
        ]
        for field, call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            err = e.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.code(), (err.details() or "")[:200])
            assert len(err.details() or "") < 512, field
            violations = field_violations(err)
            assert field in violations, (field, list(violations))
            assert " characters)" in field + violations[field], field  # clip(): 'xxx…' (N characters)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await watch(ch, svc.WatchJobsRequest(job_ids=[huge]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(e.value.details() or "") < 512


# -- 4. payloads stored by older versions ------------------------------------------------------


LEGACY_TIME_US = 1_700_000_000_000_000


def legacy_job_bytes(job_id: str, revision: int) -> bytes:
    """A FAILED job as an older version could store it: params nested 40
    levels (past what a Python watcher can parse), a NaN result, kind-less
    progress details, an error detail no client can resolve, and a 5,000
    character progress message."""
    job = Job(id=job_id, type="LEGACY", state=Job.FAILED, priority=Job.MEDIUM, project="default", creator="old",
              revision=revision, attempt_count=1, max_attempts=3, progress_message="p" * 5000)
    job.create_time.FromMicroseconds(LEGACY_TIME_US)
    error = status_pb2.Status(code=13, message="disk on fire")
    error.details.add(type_url="type.googleapis.com/acme.internal.Secret", value=b"\x08\x01")
    return (job.SerializeToString() + ld(6, nested_object_bytes(40))
            + ld(18, struct_of(frames=float("nan")).SerializeToString())
            + ld(25, kindless_bytes()) + ld(17, error.SerializeToString()))


def event_bytes(revision: int, etype: int, job: bytes) -> bytes:
    ev = res.JobEvent(revision=revision, type=etype)  # type: ignore[arg-type]
    ev.event_time.FromMicroseconds(LEGACY_TIME_US)
    return ev.SerializeToString() + ld(3, job)


def write_legacy_rows(db_url: str, legacy_id: str, good: Job, *, with_events: bool = True) -> None:
    """Rows written straight into the database, as an older version did."""
    db = open_database(db_url)
    db.connect(reuse_if_open=True)
    try:
        create_schema(db)
        m = models_for(db)
        legacy = legacy_job_bytes(legacy_id, revision=2)
        for job_id, state, data in ((legacy_id, Job.FAILED, legacy), (good.id, good.state, good.SerializeToString())):
            m.JobRow.insert(id=job_id, project="default", type="LEGACY", state=state, priority=Job.MEDIUM,
                            creator="old", create_time=LEGACY_TIME_US, update_time=LEGACY_TIME_US, revision=2,
                            data=data).execute()
        if with_events:
            rows = [(1, legacy_id, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED, legacy),
                    (2, legacy_id, res.JobEvent.UPDATED, Job.RUNNING, legacy),
                    (3, good.id, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED, good.SerializeToString())]
            for rev, job_id, etype, prev, data in rows:
                m.JobEventRow.insert(revision=rev, project="default", job_id=job_id, job_type="LEGACY",
                                     state=Job.FAILED if job_id == legacy_id else good.state, previous_state=prev,
                                     event_time=LEGACY_TIME_US, data=event_bytes(rev, etype, data)).execute()
            m.IdempotencyRow.insert(project="default", method="CreateJob", request_id="legacy-1", request_hash="h",
                                    response=legacy, create_time=LEGACY_TIME_US).execute()
            m.MetaRow.update(value=3).where(m.MetaRow.key == "revision").execute()
    finally:
        db.close()


def read_blob(db_url: str, sql: str, *args: object) -> bytes:
    db = open_database(db_url)
    db.connect(reuse_if_open=True)
    try:
        return bytes(db.execute_sql(sql.replace("?", db.param), args).fetchone()[0])
    finally:
        db.close()


def marker(db_url: str) -> int | None:
    db = open_database(db_url)
    db.connect(reuse_if_open=True)
    try:
        row = db.execute_sql(f"SELECT value FROM store_meta WHERE key = {db.param}", (sanitize.MARKER_KEY,)).fetchone()
        return None if row is None else int(row[0])
    finally:
        db.close()


def assert_readable_legacy(job: Job) -> None:
    assert "nested more than 20 levels" in job.params["unreadable"]
    assert "not a finite number" in job.result["unreadable"]
    assert "no kind set" in job.progress_details["unreadable"]
    assert job.error.message.startswith("disk on fire") and not job.error.details
    assert len(job.progress_message) <= payloads.MAX_PROGRESS_MESSAGE_CHARS
    assert job.creator == "old" and job.attempt_count == 1  # the rest is kept
    json.loads(json_format.MessageToJson(job))  # writable as JSON again


async def test_legacy_payloads_are_made_readable_once_at_startup(db_url: str) -> None:
    legacy_id, later_id = "01HA255YE6H6DEETJ5M6595ZD1", "01HA255YE6H6DEETJ5M6595ZD9"
    good = Job(id="01HA255YE6H6DEETJ5M6595ZD2", type="LEGACY", state=Job.PENDING, project="default", revision=3,
               params=struct_of(input="in.mov", n=[1, 2, {"deep": {"er": True}}]))
    write_legacy_rows(db_url, legacy_id, good)
    with pytest.raises(DecodeError):  # what every Python watcher hit before
        svc.WatchJobsResponse.FromString(ld(2, read_blob(db_url, "SELECT data FROM job_events WHERE revision = ?", 2)))

    app = await start_app(db_url)
    try:
        assert marker(db_url) == sanitize.PAYLOAD_CHECK_VERSION
        async with client(app) as ch:
            jobs = svc_grpc.JobServiceStub(ch)
            assert_readable_legacy(await jobs.GetJob(svc.GetJobRequest(id=legacy_id)))
            assert await jobs.GetJob(svc.GetJobRequest(id=good.id)) == good  # untouched
            listed = await jobs.ListJobs(svc.ListJobsRequest())
            assert [j.id for j in listed.jobs] == [legacy_id, good.id]
            events = await watch(ch, svc.WatchJobsRequest(start_revision=1), until_revision=3)
            assert [e.revision for e in events] == [1, 2, 3]
            for e in events[:2]:
                assert_readable_legacy(e.job)
            assert events[2].job == good
        reply = Job.FromString(read_blob(
            db_url, "SELECT response FROM idempotency_keys WHERE request_id = ?", "legacy-1"))
        assert_readable_legacy(reply)
        assert read_blob(db_url, "SELECT data FROM jobs WHERE id = ?", good.id) == good.SerializeToString()
    finally:
        await app.stop(None)

    # The marker keeps the pass from running again: a row poisoned after it
    # stays as it is (written straight into the database, as before).
    db = open_database(db_url)
    db.connect(reuse_if_open=True)
    poisoned = legacy_job_bytes(later_id, revision=3)
    models_for(db).JobRow.insert(id=later_id, project="default", type="LEGACY", state=Job.FAILED, priority=3,
                                 creator="old", create_time=LEGACY_TIME_US, update_time=LEGACY_TIME_US, revision=3,
                                 data=poisoned).execute()
    db.close()
    app = await start_app(db_url)
    try:
        assert read_blob(db_url, "SELECT data FROM jobs WHERE id = ?", later_id) == poisoned
    finally:
        await app.stop(None)


async def test_a_new_database_is_marked_at_once(db_url: str, tmp_path: Path) -> None:
    fresh = str(tmp_path / "fresh.db") if "://" not in db_url else fresh_pg_url()
    app = await start_app(fresh)
    try:
        assert marker(fresh) == sanitize.PAYLOAD_CHECK_VERSION
    finally:
        await app.stop(None)


async def test_problem_pages_stop_at_the_message_budget_and_cut_old_rows(sqlite_path: str) -> None:
    """Problems written by older versions (a worker's lock key could be any
    size) come back cut to their limits, in pages a default client reads."""
    db = open_database(sqlite_path)
    db.connect(reuse_if_open=True)
    create_schema(db)
    problems = models_for(db).JobProblemRow
    for i in range(1000):
        problems.insert(id=f"01HA255YE6H6DEETJ5M{i:07d}", project="default", job_id=JOB_ID, reason="LEASE_EXPIRED",
                        message="\U0001F600" * 10_000, details=json.dumps({"worker": "w" * 10_000}),
                        create_time=LEGACY_TIME_US).execute()
    db.close()
    app = await start_app(sqlite_path)
    try:
        async with client(app) as small:
            jobs = svc_grpc.JobServiceStub(small)
            seen, token, pages = [], "", 0
            while True:
                page = await jobs.ListJobProblems(svc.ListJobProblemsRequest(page_size=1000, page_token=token))
                seen += list(page.problems)
                pages += 1
                token = page.next_page_token
                if not token:
                    break
            assert len({p.id for p in seen}) == len(seen) == 1000 and pages >= 2
            assert all(len(p.message) <= payloads.MAX_PROBLEM_MESSAGE_CHARS for p in seen)
            assert all(len(p.details["worker"]) <= payloads.MAX_PROBLEM_DETAIL_CHARS for p in seen)
    finally:
        await app.stop(None)


def _grpcurl() -> str | None:
    local = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "grpcurl"
    return str(local) if local.exists() else shutil.which("grpcurl")


async def test_grpcurl_reads_repaired_and_accepted_jobs(sqlite_path: str) -> None:
    """grpcurl (Go protojson) refuses a kind-less Value or a NaN: the jobs
    the server holds must never contain one. Skipped without grpcurl."""
    grpcurl = _grpcurl()
    if grpcurl is None:
        pytest.skip("grpcurl is not installed")
    legacy_id = "01HA255YE6H6DEETJ5M6595ZD1"
    good = Job(id="01HA255YE6H6DEETJ5M6595ZD2", type="LEGACY", state=Job.PENDING, project="default", revision=3)
    write_legacy_rows(sqlite_path, legacy_id, good)
    app = await start_app(sqlite_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            grpcurl, "-plaintext", "-d", json.dumps({"id": legacy_id}), f"127.0.0.1:{app.port}",
            "mediajobs.v1.JobService/GetJob", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "unreadable" in json.loads(out)["params"]
    finally:
        await app.stop(None)


async def test_lock_keys_are_bounded_like_every_stored_string(channel: grpc.aio.Channel) -> None:
    workers = wsvc_grpc.WorkerServiceStub(channel)
    key = res.LockKey(scheduler_id="s" * 300, worker_id="w" * 5_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["T"], lock_key=key, no_wait=True))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(e.value)) == {"lock_key.scheduler_id", "lock_key.worker_id"}
    assert len(e.value.details()) < 300


async def test_custom_job_types_are_bounded_so_list_job_types_stays_readable(
    app: App, channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mediajobs.server.store import jobs as store_jobs

    monkeypatch.setattr(store_jobs, "MAX_CUSTOM_JOB_TYPES", 3)
    jobs = svc_grpc.JobServiceStub(channel)
    for t in ("A", "B", "C", "A"):
        await jobs.CreateJob(svc.CreateJobRequest(type=t))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.CreateJob(svc.CreateJobRequest(type="D"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(e.value).reason == "TOO_MANY_JOB_TYPES" and "3 custom job types" in e.value.details()
    await jobs.CreateJob(svc.CreateJobRequest(type="B"))  # a type in use is still fine
    custom = [t.name for t in (await jobs.ListJobTypes(svc.ListJobTypesRequest())).job_types if not t.built_in]
    assert custom == ["A", "B", "C"]
    assert (await jobs.ListJobs(svc.ListJobsRequest(types=["D"]))).total_size == 0
