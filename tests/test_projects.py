"""Projects keep to themselves (--auth keys, over real channels): whatever
one project holds is, to a key of another project, exactly as if it did not
exist (get, list, watch, delete, abort, re-run, lease, bulk log, cue-point
export, idempotency replies, live jobs, storage paths); a worker key reads
only the jobs it holds; viewers never see stream keys; and a media worker of
a non-home project does its work inside that project's storage area."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2

from mediajobs.client.media import synthesize_clip
from mediajobs.client.media_worker import build_media_worker
from mediajobs.server.app import App
from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import admin_service_pb2_grpc
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
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

from conftest import start_app
from test_auth import bearer, make_key

Job = res.Job
NOT_FOUND = grpc.StatusCode.NOT_FOUND


class Tenant:
    """One project's keys, and stubs that send them."""

    def __init__(self, ch: grpc.aio.Channel, name: str, keys: dict[str, str]) -> None:
        self.name, self.keys, self.ch = name, keys, ch
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
        self.live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)

    def md(self, role: str = "editor") -> list[tuple[str, str]]:
        return bearer(self.keys[role])

    async def acquire(self, job_types: list[str], role: str = "worker") -> list[wsvc.LeasedJob]:
        got = await self.workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=job_types, max_jobs=10, no_wait=True, identity=f"{self.name}-worker",
            lease_duration=duration_pb2.Duration(seconds=60)), metadata=self.md(role))
        return list(got.jobs)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def new_project(ch: grpc.aio.Channel, home_admin: str, name: str) -> Tenant:
    admin = admin_service_pb2_grpc.AdminServiceStub(ch)
    await admin.CreateProject(asvc.CreateProjectRequest(project=asvc.Project(name=name)), metadata=bearer(home_admin))
    keys = {}
    for role in ("admin", "editor", "worker", "viewer"):
        made = await admin.CreateApiKey(asvc.CreateApiKeyRequest(project=name, role=role, name=f"{name} {role}"),
                                        metadata=bearer(home_admin))
        keys[role] = made.key
    return Tenant(ch, name, keys)


@pytest.fixture
async def two(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[App, Tenant, Tenant]]:
    """A server on SQLite and on PostgreSQL, with projects acme and globex."""
    app = await start_app(db_url, auth="keys", storage_root=tmp_path / "storage")
    try:
        home_admin = await make_key(app, "admin")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield app, await new_project(ch, home_admin, "acme"), await new_project(ch, home_admin, "globex")
    finally:
        await app.stop(None)


async def test_jobs_of_another_project_do_not_exist(two: tuple[App, Tenant, Tenant]) -> None:
    _app, acme, globex = two
    made = await acme.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", request_id="r-1", metadata={"k": "v"}),
                                     metadata=acme.md())
    assert made.project == "acme"
    j = made.id
    # Get, update, abort, re-run, delete, problems: NOT_FOUND, as for an id nobody has.
    for g in (globex.jobs.GetJob(svc.GetJobRequest(id=j), metadata=globex.md("viewer")),
              globex.jobs.UpdateJob(svc.UpdateJobRequest(job=Job(id=j, priority=Job.HIGH),
                                                         update_mask={"paths": ["priority"]}), metadata=globex.md()),
              globex.jobs.AbortJob(svc.AbortJobRequest(id=j), metadata=globex.md()),
              globex.jobs.RerunJob(svc.RerunJobRequest(id=j), metadata=globex.md()),
              globex.jobs.DeleteJobs(svc.DeleteJobsRequest(ids=[j]), metadata=globex.md()),
              globex.jobs.ListJobProblems(svc.ListJobProblemsRequest(job_id=j), metadata=globex.md())):
        assert await code_of(g) == NOT_FOUND
    # The same request id in another project is another request: no replay of acme's job.
    theirs = await globex.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", request_id="r-1", metadata={"k": "v"}),
                                         metadata=globex.md())
    assert theirs.id != j and theirs.project == "globex"
    # Lists, with and without filters, hold only the caller's own.
    for req in (svc.ListJobsRequest(), svc.ListJobsRequest(types=["TRANSCODE"]),
                svc.ListJobsRequest(metadata={"k": "v"}), svc.ListJobsRequest(creator=made.creator)):
        listed = await globex.jobs.ListJobs(req, metadata=globex.md("viewer"))
        assert [x.id for x in listed.jobs] == ([theirs.id] if not req.creator else []), req
        assert listed.total_size in (0, len(listed.jobs))
    types = await globex.jobs.ListJobTypes(svc.ListJobTypesRequest(), metadata=globex.md("viewer"))
    assert "TRANSCODE" in {t.name for t in types.job_types}
    # Workers lease only their own project's jobs.
    assert [lj.job.id for lj in await globex.acquire(["TRANSCODE"])] == [theirs.id]
    (mine,) = await acme.acquire(["TRANSCODE"])
    assert mine.job.id == j and mine.storage_area == ".projects/acme"
    # The acme job still exists for acme, untouched by globex's attempts.
    again = await acme.jobs.GetJob(svc.GetJobRequest(id=j), metadata=acme.md("viewer"))
    assert again.state == Job.RUNNING and again.priority != Job.HIGH


async def test_a_worker_key_reads_only_the_jobs_it_holds(two: tuple[App, Tenant, Tenant]) -> None:
    _app, acme, _globex = two
    a = await acme.jobs.CreateJob(svc.CreateJobRequest(type="PROBE"), metadata=acme.md())
    b = await acme.jobs.CreateJob(svc.CreateJobRequest(type="OTHER"), metadata=acme.md())
    (held,) = await acme.acquire(["PROBE"])
    assert held.job.lease.holder.startswith("key:")
    got = await acme.jobs.GetJob(svc.GetJobRequest(id=a.id), metadata=acme.md("worker"))
    assert got.state == Job.RUNNING
    assert await code_of(acme.jobs.GetJob(svc.GetJobRequest(id=b.id), metadata=acme.md("worker"))) == NOT_FOUND
    assert await code_of(acme.jobs.ListJobs(svc.ListJobsRequest(), metadata=acme.md("worker"))) == \
        grpc.StatusCode.PERMISSION_DENIED
    await acme.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=a.id, lease_token=held.lease_token),
                                   metadata=acme.md("worker"))
    # Once done it is no longer held: the worker key reads it no more.
    assert await code_of(acme.jobs.GetJob(svc.GetJobRequest(id=a.id), metadata=acme.md("worker"))) == NOT_FOUND


async def test_watch_carries_only_the_callers_project(two: tuple[App, Tenant, Tenant]) -> None:
    _app, acme, globex = two
    first = await acme.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=acme.md())
    mine = await globex.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=globex.md())
    later = await acme.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=acme.md())
    mine2 = await globex.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=globex.md())

    async def seen(t: Tenant, req: svc.WatchJobsRequest, n: int) -> list[str]:
        out: list[str] = []
        call = t.jobs.WatchJobs(req, metadata=t.md("viewer"), timeout=30)
        async for resp in call:
            out += [e.job.id for e in resp.events]
            if len(out) >= n:
                call.cancel()
                break
        return out

    # From the start of history, by type, and naming acme's job ids
    # outright: globex sees its own two jobs, in order, and nothing of acme.
    assert await seen(globex, svc.WatchJobsRequest(start_revision=1), 2) == [mine.id, mine2.id]
    assert await seen(globex, svc.WatchJobsRequest(start_revision=1, types=["TRANSCODE"]), 2) == [mine.id, mine2.id]
    assert await seen(globex, svc.WatchJobsRequest(start_revision=1, job_ids=[first.id, later.id, mine2.id]),
                      1) == [mine2.id]
    assert await seen(acme, svc.WatchJobsRequest(start_revision=1), 2) == [first.id, later.id]
    # The initial snapshot too.
    call = globex.jobs.WatchJobs(svc.WatchJobsRequest(send_initial_snapshot=True), metadata=globex.md("viewer"))
    snap: list[str] = []
    async for resp in call:
        snap += [e.job.id for e in resp.events]
        if resp.HasField("progress") and resp.progress.snapshot_complete:
            call.cancel()
            break
    assert sorted(snap) == sorted([mine.id, mine2.id])
    # Live delivery, after the watch has started: only globex's next job.
    await _app.hub.wait_for_watchers(0)  # the watches above have ended
    call = globex.jobs.WatchJobs(svc.WatchJobsRequest(), metadata=globex.md("viewer"), timeout=30)
    live: list[str] = []

    async def pump() -> None:
        async for resp in call:
            live.extend(e.job.id for e in resp.events)
            if live:
                return

    task = asyncio.create_task(pump())
    await _app.hub.wait_for_watchers(1)  # registered: no later event can be missed
    await acme.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=acme.md())
    last = await globex.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"), metadata=globex.md())
    await asyncio.wait_for(task, 30)
    call.cancel()
    assert live == [last.id]


async def test_entries_cue_points_bulk_uploads_and_live_jobs_stay_in_their_project(
        two: tuple[App, Tenant, Tenant]) -> None:
    _app, acme, globex = two
    entry = await acme.media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="clip")), metadata=acme.md())
    xml = ('<?xml version="1.0"?><scenes><scene-annotation entryId="%s"><sceneStartTime>00:00:01.000'
           '</sceneStartTime></scene-annotation></scenes>' % entry.id).encode()
    imported = await acme.media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=xml), metadata=acme.md())
    assert len(imported.cue_points) == 1
    assert await code_of(globex.media.GetEntry(msvc.GetEntryRequest(id=entry.id), metadata=globex.md())) == NOT_FOUND
    assert await code_of(globex.media.DeleteEntry(msvc.DeleteEntryRequest(id=entry.id), metadata=globex.md())) \
        == NOT_FOUND
    assert not (await globex.media.ListEntries(msvc.ListEntriesRequest(), metadata=globex.md())).entries
    # A cue point import naming acme's entry from globex: as for an unknown entry.
    theirs = await globex.media.ImportCuePoints(msvc.ImportCuePointsRequest(xml=xml), metadata=globex.md())
    unknown = await globex.media.ImportCuePoints(msvc.ImportCuePointsRequest(
        xml=xml.replace(entry.id.encode(), b"0" * len(entry.id))), metadata=globex.md())
    assert not theirs.cue_points and len(theirs.errors) == len(unknown.errors) == 1
    assert theirs.errors[0].message.replace(entry.id, "X") == unknown.errors[0].message.replace("0" * len(entry.id),
                                                                                                 "X")
    # Export naming acme's entry: the same answer as for an entry nobody has.
    async def export(t: Tenant, ids: list[str]) -> tuple[grpc.StatusCode, int]:
        try:
            r = await t.media.ExportCuePoints(msvc.ExportCuePointsRequest(entry_ids=ids), metadata=t.md("viewer"))
        except grpc.aio.AioRpcError as e:
            return e.code(), -1
        return grpc.StatusCode.OK, r.count
    assert await export(acme, [entry.id]) == (grpc.StatusCode.OK, 1)
    assert await export(globex, [entry.id]) == await export(globex, ["0" * len(entry.id)])
    assert (await export(globex, []))[1] in (0, -1)

    # Bulk uploads: the upload, its file, its log and its results.
    up = await acme.bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(
        bulk_upload=bres.BulkUpload(file_name="c.csv"), content=b"name\nOne\n"), metadata=acme.md())
    for call in (globex.bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=up.id), metadata=globex.md()),
                 globex.bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=up.id), metadata=globex.md()),
                 globex.bulk.ListBulkUploadResults(bsvc.ListBulkUploadResultsRequest(id=up.id), metadata=globex.md())):
        assert await code_of(call) == NOT_FOUND

    async def first_of(stream: Any) -> grpc.StatusCode:
        try:
            async for _ in stream:
                break
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK
    assert await first_of(globex.bulk.ReadBulkUploadLog(bsvc.ReadBulkUploadLogRequest(id=up.id),
                                                        metadata=globex.md())) == NOT_FOUND
    assert await first_of(globex.bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(id=up.id),
                                                         metadata=globex.md())) == NOT_FOUND
    assert await first_of(globex.bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=up.id),
                                                      metadata=globex.md())) == NOT_FOUND
    assert not (await globex.bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(), metadata=globex.md())).bulk_uploads
    # The upload is applied in its own project: its entry is acme's.
    async for u in acme.bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=up.id), metadata=acme.md(), timeout=60):
        if u.state == bres.BulkUpload.SUCCEEDED:
            break
    listed = await acme.media.ListEntries(msvc.ListEntriesRequest(), metadata=acme.md())
    assert {e.name for e in listed.entries} == {"clip", "One"}
    assert not (await globex.media.ListEntries(msvc.ListEntriesRequest(), metadata=globex.md())).entries

    # Live jobs, by id and by name; and a viewer of the owning project sees no keys.
    lj = await acme.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
        bucket="events", destination="a", input=lres.LiveInput(server_type=lres.LiveInput.RTMP))),
        metadata=acme.md())
    assert lj.stream_key
    for ref in (lj.id, lj.name):
        assert await code_of(globex.live.GetLiveJob(lsvc.GetLiveJobRequest(id=ref), metadata=globex.md())) \
            == NOT_FOUND
    assert await code_of(globex.live.DeleteLiveJob(lsvc.DeleteLiveJobRequest(id=lj.id), metadata=globex.md())) \
        == NOT_FOUND
    assert not (await globex.live.ListLiveJobs(lsvc.ListLiveJobsRequest(), metadata=globex.md())).live_jobs
    seen = await acme.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id), metadata=acme.md("viewer"))
    assert seen.id == lj.id and not seen.stream_key and not seen.ingest_url
    listed_live = await acme.live.ListLiveJobs(lsvc.ListLiveJobsRequest(include_stream_key=True),
                                               metadata=acme.md("viewer"))
    assert [x.stream_key for x in listed_live.live_jobs] == [""]
    # A stream key of acme is unknown to globex's workers.
    assert await code_of(globex.workers.AuthorizePublish(wsvc.AuthorizePublishRequest(stream_key=lj.stream_key),
                                                         metadata=globex.md("worker"))) != grpc.StatusCode.OK


async def test_storage_areas_cannot_be_named_or_probed_across_projects(
        two: tuple[App, Tenant, Tenant], tmp_path: Path) -> None:
    app, acme, globex = two
    root = app.cfg.storage_dir()
    (root / "home.txt").write_text("home")
    (root / ".projects" / "acme").mkdir(parents=True)
    (root / ".projects" / "acme" / "mine.txt").write_text("acme")
    (root / ".projects" / "globex").mkdir(parents=True)
    (root / ".projects" / "globex" / "link").symlink_to(root / ".projects" / "acme" / "mine.txt")

    async def exists(t: Tenant | None, path: str) -> Any:
        stub = (t or acme).workers
        md = t.md("worker") if t else bearer(app_home_worker)
        try:
            return (await stub.CheckFileExists(wsvc.CheckFileExistsRequest(local_path=path, size=-1),
                                               metadata=md)).exists
        except grpc.aio.AioRpcError as e:
            return e.code()

    app_home_worker = await make_key(app, "worker")
    assert await exists(acme, "mine.txt") is True
    assert await exists(acme, "home.txt") is False  # the home project's file is not in acme's area
    assert await exists(globex, "mine.txt") is False
    assert await exists(globex, "../acme/mine.txt") == grpc.StatusCode.INVALID_ARGUMENT
    assert await exists(globex, "link") == grpc.StatusCode.PERMISSION_DENIED  # a link out of its area
    assert await exists(None, "home.txt") is True
    assert await exists(None, ".projects/acme/mine.txt") is False  # hidden from the home project
    assert await exists(None, "./.projects/acme/mine.txt") is False
    # Entries: a source in another area, by relative path or file:// URL.
    for t, uri in ((globex, "mine.txt"), (globex, f"file://{root}/.projects/acme/mine.txt"),
                   (acme, f"file://{root}/home.txt")):
        code = await code_of(t.media.CreateEntry(msvc.CreateEntryRequest(
            entry=mres.Entry(name="x", source_uri=uri)), metadata=t.md()))
        assert code in (NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (t.name, uri, code)
    made = await acme.media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="x", source_uri="mine.txt")),
                                        metadata=acme.md())
    assert made.source_uri == "mine.txt"
    # Bulk sources resolve in the upload's project's area too.
    up = await acme.bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(
        bulk_upload=bres.BulkUpload(file_name="c.csv"), content=b"name,source\nA,home.txt\nB,mine.txt\n"),
        metadata=acme.md())
    async for u in acme.bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=up.id), metadata=acme.md(), timeout=60):
        if u.counts.applied == 2:  # both records applied (B's entry then waits for a worker)
            break
    results = (await acme.bulk.ListBulkUploadResults(bsvc.ListBulkUploadResultsRequest(id=up.id),
                                                     metadata=acme.md())).results
    assert [r.status == bres.BulkUploadResult.ERROR for r in results] == [True, False], \
        [(r.status, r.error.message) for r in results]
    entry_b = await acme.media.GetEntry(msvc.GetEntryRequest(id=results[1].object_id), metadata=acme.md())
    assert entry_b.source_uri == "mine.txt"
    assert "does not exist" in results[0].error.message and str(root / "home.txt") not in results[0].error.message


async def test_a_media_worker_works_inside_its_projects_area(two: tuple[App, Tenant, Tenant]) -> None:
    app, acme, globex = two
    area = app.cfg.storage_dir() / ".projects" / "acme"
    synthesize_clip(area / "in" / "clip.mp4", 1.0, 160, 120, fps=10)
    worker = build_media_worker(f"127.0.0.1:{app.port}", app.cfg.storage_dir(), concurrency=1,
                                api_key=acme.keys["worker"])
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        entry = await acme.media.CreateEntry(msvc.CreateEntryRequest(
            entry=mres.Entry(name="clip", source_uri="in/clip.mp4")), metadata=acme.md())
        assert entry.source_uri == "in/clip.mp4"
        async for resp in acme.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=1), metadata=acme.md("viewer"),
                                              timeout=60):
            if any(e.job.state in (Job.SUCCEEDED, Job.FAILED) for e in resp.events):
                break
        done = await acme.media.GetEntry(msvc.GetEntryRequest(id=entry.id), metadata=acme.md())
        assert done.source_media_info_id, done
        infos = await acme.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=entry.id),
                                                metadata=acme.md())
        assert infos.media_infos and infos.media_infos[0].video_width == 160
        assert await code_of(globex.media.GetMediaInfo(msvc.GetMediaInfoRequest(id=done.source_media_info_id),
                                                       metadata=globex.md())) == NOT_FOUND
    finally:
        worker.stop(0)
        await run


async def test_quotas_are_per_project(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", quota_pending_jobs=1)
    try:
        home_admin = await make_key(app, "admin")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            acme, globex = await new_project(ch, home_admin, "acme"), await new_project(ch, home_admin, "globex")
            await acme.jobs.CreateJob(svc.CreateJobRequest(type="T"), metadata=acme.md())
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await acme.jobs.CreateJob(svc.CreateJobRequest(type="T"), metadata=acme.md())
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "pending_jobs" in (e.value.details() or "")
            # acme's full quota leaves globex's untouched.
            made = await globex.jobs.CreateJob(svc.CreateJobRequest(type="T"), metadata=globex.md())
            assert made.project == "globex"
    finally:
        await app.stop(None)


async def test_revoking_a_key_ends_its_watches_and_a_deleted_projects_history_is_gone(
        two: tuple[App, Tenant, Tenant]) -> None:
    app, acme, globex = two
    admin = admin_service_pb2_grpc.AdminServiceStub(acme.ch)
    made = await admin.CreateApiKey(asvc.CreateApiKeyRequest(project="acme", role="viewer"), metadata=acme.md("admin"))
    await app.hub.wait_for_watchers(0)
    doomed = acme.jobs.WatchJobs(svc.WatchJobsRequest(), metadata=bearer(made.key), timeout=60)
    kept = globex.jobs.WatchJobs(svc.WatchJobsRequest(), metadata=globex.md("viewer"), timeout=60)
    await app.hub.wait_for_watchers(2)
    await admin.RevokeApiKey(asvc.RevokeApiKeyRequest(id=made.api_key.id), metadata=acme.md("admin"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in doomed:
            pass
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (e.value.details() or "")
    await app.hub.wait_for_watchers(1)  # the other key's watch goes on
    kept.cancel()

    # A project deleted with force and made again under the same name starts
    # with no history: not even the server's in-memory buffer shows the old one.
    old = await acme.jobs.CreateJob(svc.CreateJobRequest(type="T"), metadata=acme.md())
    home_admin = await make_key(app, "admin")
    await admin.DeleteProject(asvc.DeleteProjectRequest(name="acme", force=True), metadata=bearer(home_admin))
    assert await code_of(acme.jobs.GetJob(svc.GetJobRequest(id=old.id), metadata=acme.md())) == \
        grpc.StatusCode.UNAUTHENTICATED  # its keys went with it
    again = await new_project(acme.ch, home_admin, "acme")
    fresh = await again.jobs.CreateJob(svc.CreateJobRequest(type="T"), metadata=again.md())
    call = again.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=1), metadata=again.md("viewer"), timeout=30)
    async for resp in call:
        if resp.events:
            assert [ev.job.id for ev in resp.events] == [fresh.id]
            call.cancel()
            break
    assert await code_of(again.jobs.GetJob(svc.GetJobRequest(id=old.id), metadata=again.md())) == NOT_FOUND
