"""JobService over a real channel: create, get, list, update, abort, rerun,
delete, types, problems, and the errors each returns."""
from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from mediajobs.server.store import jobs as store_jobs
from mediajobs.server.store import leases as store_leases
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from conftest import error_info, field_violations

Job = res.Job


def params(**kw: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


async def test_create_and_get_round_trip(jobs):
    created = await jobs.CreateJob(
        svc.CreateJobRequest(
            type="TRANSCODE", priority=Job.HIGH, metadata={"asset": "a1"},
            params=params(input="in.mov", outputs=["720p"]), creator="alice",
        )
    )
    assert len(created.id) == 26
    assert created.state == Job.PENDING and created.priority == Job.HIGH
    assert created.project == "default" and created.creator == "alice"
    assert created.max_attempts == 3 and created.revision > 0
    assert created.create_time.seconds > 0

    got = await jobs.GetJob(svc.GetJobRequest(id=created.id))
    assert got.id == created.id and got.params["input"] == "in.mov"
    assert not got.metadata, "metadata is returned only when asked for (Vidispine metadata=false)"
    with_meta = await jobs.GetJob(svc.GetJobRequest(id=created.id, include_metadata=True))
    assert dict(with_meta.metadata) == {"asset": "a1"}

    masked = await jobs.GetJob(svc.GetJobRequest(id=created.id, read_mask=field_mask_pb2.FieldMask(paths=["id", "state"])))
    assert masked.id == created.id and masked.state == Job.PENDING
    assert masked.type == "" and not masked.HasField("params")


async def test_ulids_sort_by_creation(jobs):
    ids = [(await jobs.CreateJob(svc.CreateJobRequest(type="T"))).id for _ in range(5)]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    "req,field",
    [
        (svc.CreateJobRequest(), "type"),
        (svc.CreateJobRequest(type="has space"), "type"),
        (svc.CreateJobRequest(type="T", priority=42), "priority"),  # type: ignore[arg-type]
        (svc.CreateJobRequest(type="T", max_attempts=1000), "max_attempts"),
        (svc.CreateJobRequest(type="T", metadata={"k": "v" * 5000}), "metadata['k']"),
    ],
)
async def test_create_rejects_bad_input_with_field_violations(jobs, req, field):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.CreateJob(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(e.value).reason == "INVALID_ARGUMENT"
    assert error_info(e.value).domain == "mediajobs"
    assert field in field_violations(e.value)


async def test_get_unknown_and_malformed_ids(jobs):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.GetJob(svc.GetJobRequest(id="01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(e.value)
    assert info.reason == "JOB_NOT_FOUND" and info.metadata["job_id"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV"

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.GetJob(svc.GetJobRequest(id="nope"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id" in field_violations(e.value)

    for paths in (["bogus"], ["params.x"], ["id.y"]):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await jobs.GetJob(svc.GetJobRequest(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", read_mask=field_mask_pb2.FieldMask(paths=paths)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths


async def test_idempotent_create_under_concurrent_duplicates(jobs, app):
    req = svc.CreateJobRequest(type="TRANSCODE", request_id="7d4c1a4e-0c1f-4b0e-9b7a-3f1f0b8e2a11", metadata={"a": "b"})
    results = await asyncio.gather(*[jobs.CreateJob(req) for _ in range(10)])
    assert len({r.id for r in results}) == 1
    assert all(r == results[0] for r in results)
    listed = await jobs.ListJobs(svc.ListJobsRequest())
    assert [j.id for j in listed.jobs] == [results[0].id]

    # Same id, different payload: refused, nothing created.
    other = svc.CreateJobRequest(type="TRANSCODE", request_id=req.request_id, metadata={"a": "c"})
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.CreateJob(other)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(e.value).reason == "REQUEST_ID_REUSED"
    assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 1


async def test_idempotency_survives_restart(sqlite_path):
    from conftest import start_app
    from mediajobs.v1 import job_service_pb2_grpc

    req = svc.CreateJobRequest(type="T", request_id="r-1")
    app1 = await start_app(sqlite_path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app1.port}") as ch:
        first = await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(req)
    await app1.stop(None)
    app2 = await start_app(sqlite_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app2.port}") as ch:
            again = await job_service_pb2_grpc.JobServiceStub(ch).CreateJob(req)
    finally:
        await app2.stop(None)
    assert again == first


async def test_update_priority(jobs):
    j = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    upd = await jobs.UpdateJob(
        svc.UpdateJobRequest(job=Job(id=j.id, priority=Job.HIGHEST), update_mask=field_mask_pb2.FieldMask(paths=["priority"]))
    )
    assert upd.priority == Job.HIGHEST and upd.revision > j.revision
    for mask in ([], ["type"]):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await jobs.UpdateJob(
                svc.UpdateJobRequest(job=Job(id=j.id, priority=Job.LOW), update_mask=field_mask_pb2.FieldMask(paths=mask))
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await jobs.AbortJob(svc.AbortJobRequest(id=j.id))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.UpdateJob(
            svc.UpdateJobRequest(job=Job(id=j.id, priority=Job.LOW), update_mask=field_mask_pb2.FieldMask(paths=["priority"]))
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(e.value).reason == "JOB_FINISHED"


async def test_abort_semantics(jobs, app):
    pending = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    aborted = await jobs.AbortJob(svc.AbortJobRequest(id=pending.id, reason="not needed"))
    assert aborted.state == Job.ABORTED and aborted.abort_reason == "not needed"
    assert aborted.end_time.seconds > 0
    # Aborting again is a no-op that returns the job.
    assert (await jobs.AbortJob(svc.AbortJobRequest(id=pending.id))).state == Job.ABORTED

    running = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    await app.store.write(lambda tx: store_leases.lease_job(tx, running.id, 10**7, res.LockKey(), "w"))
    aborting = await jobs.AbortJob(svc.AbortJobRequest(id=running.id, skip_cleanup=True))
    assert aborting.state == Job.ABORTING and aborting.abort_skip_cleanup
    assert aborting.end_time.seconds == 0

    # A finished job cannot be aborted.
    done = await jobs.CreateJob(svc.CreateJobRequest(type="T"))

    def succeed(tx):
        job, lease = store_jobs.load_job_for_update(tx, done.id)
        job.state = Job.SUCCEEDED
        store_jobs.emit(tx, job, res.JobEvent.UPDATED, Job.PENDING)
        store_jobs.save_job(tx, job, lease)

    await app.store.write(succeed)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.AbortJob(svc.AbortJobRequest(id=done.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(e.value).reason == "JOB_FINISHED"


async def test_rerun_copies_definition(jobs):
    orig = await jobs.CreateJob(
        svc.CreateJobRequest(type="TRANSCODE", priority=Job.LOW, metadata={"k": "v"}, params=params(x=1), max_attempts=5)
    )
    await jobs.AbortJob(svc.AbortJobRequest(id=orig.id))
    again = await jobs.RerunJob(svc.RerunJobRequest(id=orig.id))
    assert again.id != orig.id and again.rerun_of == orig.id
    assert again.state == Job.PENDING and again.priority == Job.LOW and again.max_attempts == 5
    assert again.params == orig.params
    assert dict((await jobs.GetJob(svc.GetJobRequest(id=again.id, include_metadata=True))).metadata) == {"k": "v"}
    higher = await jobs.RerunJob(svc.RerunJobRequest(id=orig.id, priority=Job.HIGHEST))
    assert higher.priority == Job.HIGHEST


async def test_delete_jobs(jobs, app):
    a = await jobs.CreateJob(svc.CreateJobRequest(type="T", metadata={"m": "1"}))
    b = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.DeleteJobs(svc.DeleteJobsRequest(ids=[a.id, missing]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 2, "all or nothing"

    await app.store.write(lambda tx: store_leases.lease_job(tx, b.id, 10**7, res.LockKey(), "w"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.DeleteJobs(svc.DeleteJobsRequest(ids=[a.id, b.id]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and error_info(e.value).reason == "JOB_ACTIVE"

    await app.store.write(lambda tx: store_jobs.add_problem(tx, a.id, "LEASE_EXPIRED", "worker vanished", {"worker": "w"}))
    resp = await jobs.DeleteJobs(svc.DeleteJobsRequest(ids=[a.id, b.id, missing], allow_missing=True, force=True))
    assert sorted(resp.deleted_ids) == sorted([a.id, b.id])
    assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 0
    assert not (await jobs.ListJobProblems(svc.ListJobProblemsRequest())).problems
    assert not (await jobs.ListJobs(svc.ListJobsRequest(metadata={"m": "1"}))).jobs
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.GetJob(svc.GetJobRequest(id=a.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_job_types_lists_built_ins_and_custom(jobs):
    await jobs.CreateJob(svc.CreateJobRequest(type="MY_CUSTOM"))
    await jobs.CreateJob(svc.CreateJobRequest(type="MY_CUSTOM"))
    types = (await jobs.ListJobTypes(svc.ListJobTypesRequest())).job_types
    names = [t.name for t in types]
    assert "TRANSCODE" in names and names.count("MY_CUSTOM") == 1
    custom = next(t for t in types if t.name == "MY_CUSTOM")
    assert not custom.built_in
    assert all(t.description for t in types)


async def test_job_problems(jobs, app):
    a = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    b = await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    for j in (a, b):
        await app.store.write(
            lambda tx, j=j: store_jobs.add_problem(tx, j.id, "LEASE_EXPIRED", "no heartbeat", {"worker": "w1"})
        )
    every = (await jobs.ListJobProblems(svc.ListJobProblemsRequest())).problems
    assert [p.job_id for p in every] == [a.id, b.id]
    assert every[0].details["worker"] == "w1" and every[0].job_state == Job.PENDING
    one = (await jobs.ListJobProblems(svc.ListJobProblemsRequest(job_id=b.id))).problems
    assert [p.job_id for p in one] == [b.id]
    assert [p.reason for p in (await jobs.GetJob(svc.GetJobRequest(id=a.id))).problems] == ["LEASE_EXPIRED"]
    page = await jobs.ListJobProblems(svc.ListJobProblemsRequest(page_size=1))
    assert len(page.problems) == 1 and page.next_page_token
    rest = await jobs.ListJobProblems(svc.ListJobProblemsRequest(page_size=1, page_token=page.next_page_token))
    assert rest.problems[0].job_id == b.id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.ListJobProblems(svc.ListJobProblemsRequest(job_id="01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_errors(jobs):
    cases = [
        svc.ListJobsRequest(page_size=-1),
        svc.ListJobsRequest(order_by="colour desc"),
        svc.ListJobsRequest(order_by="priority sideways"),
        svc.ListJobsRequest(page_token="garbage!"),
    ]
    for req in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await jobs.ListJobs(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
    for _ in range(3):
        await jobs.CreateJob(svc.CreateJobRequest(type="T"))
    first = await jobs.ListJobs(svc.ListJobsRequest(page_size=1, types=["T"]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.ListJobs(svc.ListJobsRequest(page_size=1, types=["OTHER"], page_token=first.next_page_token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(e.value)


_ = dt


async def test_batch_create_is_all_or_nothing(jobs):
    ok = await jobs.BatchCreateJobs(
        svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T", metadata={"i": str(i)}) for i in range(50)])
    )
    assert len(ok.jobs) == 50 and [j.id for j in ok.jobs] == sorted(j.id for j in ok.jobs)
    revs = [j.revision for j in ok.jobs]
    assert revs == list(range(revs[0], revs[0] + 50))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await jobs.BatchCreateJobs(
            svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T"), svc.CreateJobRequest(type="")])
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].type" in field_violations(e.value)
    assert (await jobs.ListJobs(svc.ListJobsRequest())).total_size == 50
    # request ids are honoured per item, shared with CreateJob
    single = await jobs.CreateJob(svc.CreateJobRequest(type="T", request_id="b-1"))
    again = await jobs.BatchCreateJobs(
        svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="T", request_id="b-1"), svc.CreateJobRequest(type="T")])
    )
    assert again.jobs[0] == single and again.jobs[1].id != single.id
