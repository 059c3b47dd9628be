"""MediaService entries, media info and job templates over a real channel, on
SQLite and PostgreSQL. The "worker" here is the test itself, driving the
WorkerService calls a worker makes, so every step of an entry's processing
can be checked in between."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, field_violations, start_app

Entry = mres.Entry
Job = res.Job

TWO_OUTPUTS = mres.JobTemplate(
    display_name="tiny ladder",
    outputs=[
        mres.OutputSpec(name="small", container="mp4", video_codec="h264", width=160, height=120,
                        audio_codec="aac", video_bit_rate_bps=300_000),
        mres.OutputSpec(name="audio", container="mp4", audio_codec="aac", audio_bit_rate_bps=64_000),
    ],
)


class Stubs:
    def __init__(self, ch: grpc.aio.Channel, app: App) -> None:
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        self.app = app
        self.root: Path = app.cfg.storage_dir()

    async def lease(self, job_type: str) -> wsvc.LeasedJob:
        resp = await self.workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=[job_type], max_jobs=1, lease_duration=duration_pb2.Duration(seconds=30),
            identity="test-worker", no_wait=True))
        assert len(resp.jobs) == 1, f"no {job_type} job to lease"
        return resp.jobs[0]

    async def complete(self, leased: wsvc.LeasedJob, result: dict[str, Any]) -> Job:
        st = struct_pb2.Struct()
        st.update(result)
        return await self.workers.CompleteJob(wsvc.CompleteJobRequest(
            job_id=leased.job.id, lease_token=leased.lease_token, result=st))

    async def entry(self, entry_id: str) -> Entry:
        return await self.media.GetEntry(msvc.GetEntryRequest(id=entry_id))


@pytest.fixture
async def s(db_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    app = await start_app(db_url, storage_root=tmp_path / "storage", lease_sweep_interval_s=3600)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Stubs(ch, app)
    finally:
        await app.stop(None)


def source_file(s: Stubs, rel: str = "incoming/clip.mov", data: bytes = b"not really a movie") -> str:
    p = s.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return rel


async def create_template(s: Stubs, template_id: str = "tiny-ladder") -> mres.JobTemplate:
    return await s.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TWO_OUTPUTS,
                                                                          job_template_id=template_id))


# -- entries without processing ---------------------------------------------------------


async def test_entry_without_source_is_pending_and_listable(s: Stubs) -> None:
    made = []
    for i in range(5):
        made.append(await s.media.CreateEntry(msvc.CreateEntryRequest(
            entry=Entry(name=f"e{i}", tags=["news"] if i % 2 == 0 else ["sport"], reference_id=f"ref-{i}"),
            creator="alice")))
    e = made[0]
    assert e.state == Entry.PENDING and not e.job_ids and not e.flavor_assets and e.creator == "alice"
    got = await s.entry(e.id)
    assert got == e
    page1 = await s.media.ListEntries(msvc.ListEntriesRequest(page_size=2))
    assert [x.id for x in page1.entries] == [made[4].id, made[3].id]  # newest first
    page2 = await s.media.ListEntries(msvc.ListEntriesRequest(page_size=2, page_token=page1.next_page_token))
    page3 = await s.media.ListEntries(msvc.ListEntriesRequest(page_size=2, page_token=page2.next_page_token))
    assert [x.id for x in list(page2.entries) + list(page3.entries)] == [made[2].id, made[1].id, made[0].id]
    assert not page3.next_page_token
    news = await s.media.ListEntries(msvc.ListEntriesRequest(tag="news"))
    assert sorted(x.name for x in news.entries) == ["e0", "e2", "e4"]
    by_ref = await s.media.ListEntries(msvc.ListEntriesRequest(reference_id="ref-3"))
    assert [x.name for x in by_ref.entries] == ["e3"]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.ListEntries(msvc.ListEntriesRequest(page_size=2, tag="sport", page_token=page1.next_page_token))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await s.media.DeleteEntry(msvc.DeleteEntryRequest(id=e.id))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.entry(e.id)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and error_info(ei.value).reason == "ENTRY_NOT_FOUND"
    await s.media.DeleteEntry(msvc.DeleteEntryRequest(id=e.id, allow_missing=True))


async def test_bad_entries_are_refused_with_the_field_to_fix(s: Stubs, tmp_path: Path) -> None:
    outside = tmp_path / "outside.mov"
    outside.write_bytes(b"x")
    source_file(s, "ok.mov")
    os.symlink(outside, s.root / "link.mov")
    cases = [
        (Entry(name=""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "entry.name"),
        (Entry(name="x", source_uri="../outside.mov"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
         "entry.source_uri"),
        (Entry(name="x", source_uri=f"file://{outside}"), grpc.StatusCode.INVALID_ARGUMENT,
         "PATH_OUTSIDE_STORAGE_ROOT", "entry.source_uri"),
        (Entry(name="x", source_uri="/etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
         "entry.source_uri"),
        (Entry(name="x", source_uri="http://example.com/a.mp4"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_ARGUMENT", "entry.source_uri"),
        (Entry(name="x", source_uri="link.mov"), grpc.StatusCode.PERMISSION_DENIED, "PATH_OUTSIDE_STORAGE_ROOT", None),
        (Entry(name="x", source_uri="missing.mov"), grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND", None),
        (Entry(name="x", source_uri="ok.mov", template_id="no-such-template"), grpc.StatusCode.NOT_FOUND,
         "TEMPLATE_NOT_FOUND", None),
        (Entry(name="x", template_id="mp4-h264-720p"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
         "entry.template_id"),
        (Entry(name="x", state=Entry.READY), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "entry.state"),
    ]
    for entry, code, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await s.media.CreateEntry(msvc.CreateEntryRequest(entry=entry))
        assert ei.value.code() == code, (entry, ei.value.details())
        assert error_info(ei.value).reason == reason, (entry, ei.value.details())
        if field:
            assert field in field_violations(ei.value), (entry, field_violations(ei.value))
    assert "/etc/passwd" not in str(s.root)
    listed = await s.media.ListEntries(msvc.ListEntriesRequest())
    assert not listed.entries  # nothing was created by any refused request


async def test_file_url_inside_the_root_is_stored_relative(s: Stubs) -> None:
    rel = source_file(s, "a b/clip #1 %41.mov")
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="x", source_uri=(s.root / rel).absolute().as_uri())))
    assert e.source_uri == rel
    assert e.template_id == "mp4-h264-720p" and [fa.output_name for fa in e.flavor_assets] == ["720p"]


async def test_source_errors_name_the_storage_root_and_echo_only_a_prefix(s: Stubs, tmp_path: Path) -> None:
    root = os.path.abspath(s.root)
    deep = "/".join(["a" * 9] * 40) + "/missing.mov"  # 411 characters, each part short: NOT_FOUND
    outside = "file://" + "/x" * 300 + "/clip.mov"
    cases = [
        ("incoming/clip.mov", grpc.StatusCode.NOT_FOUND,
         f"source 'incoming/clip.mov' does not exist under the storage root {root}"),
        (deep, grpc.StatusCode.NOT_FOUND, f"({len(deep)} characters) does not exist under the storage root {root}"),
        (outside, grpc.StatusCode.INVALID_ARGUMENT, f"is outside the server's storage root {root}"),
        ("ftp://" + "h" * 500, grpc.StatusCode.INVALID_ARGUMENT, "only paths relative to the storage root"),
        ((s.root / "clip.mov").as_uri() + "#t=1", grpc.StatusCode.INVALID_ARGUMENT, "has a query or fragment"),
    ]
    for source, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=source)))
        details = ei.value.details() or ""
        assert ei.value.code() == code and text in details, (source[:40], details)
        assert len(details) < 400, f"the error echoes the whole input: {details}"
    info = error_info(await _refusal(s, "incoming/clip.mov"))
    assert info.metadata["storage_root"] == root and info.metadata["source"] == "incoming/clip.mov"


async def _refusal(s: Stubs, source: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=source)))
    return ei.value


async def test_a_relative_source_resolves_under_the_storage_root_whatever_the_cwd(
        s: Stubs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the storage root
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "here.mov").write_bytes(b"in the server's cwd, not under its root")
    rel = source_file(s)
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=rel)))
    assert e.source_uri == "incoming/clip.mov" and e.job_ids
    err = await _refusal(s, "incoming/here.mov")
    assert err.code() == grpc.StatusCode.NOT_FOUND and error_info(err).reason == "SOURCE_NOT_FOUND"


# -- processing ------------------------------------------------------------------


async def test_entry_goes_extract_then_one_transcode_per_output_then_ready(s: Stubs) -> None:
    await create_template(s)
    src = source_file(s)
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="clip", source_uri=src, template_id="tiny-ladder"), priority=Job.HIGH, request_id="r1"))
    assert e.state == Entry.PENDING and len(e.job_ids) == 1
    assert [fa.output_name for fa in e.flavor_assets] == ["small", "audio"]
    assert all(fa.state == mres.FlavorAsset.QUEUED and not fa.job_id for fa in e.flavor_assets)
    again = await s.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="clip", source_uri=src, template_id="tiny-ladder"), priority=Job.HIGH, request_id="r1"))
    assert again.id == e.id  # idempotent

    extract = await s.lease("EXTRACT_MEDIA")
    assert extract.job.id == e.job_ids[0] and extract.job.priority == Job.HIGH
    assert dict(extract.job.metadata) == {"entry_id": e.id, "entry_step": "extract"}
    assert json_format.MessageToDict(extract.job.params) == {"source": src, "entry_id": e.id}
    assert (await s.entry(e.id)).state == Entry.PROCESSING

    mi = await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=mres.MediaInfo(
        entry_id=e.id, container_format="mov,mp4,m4a,3gp,3g2,mj2", container_duration_ms=3000,
        video_width=320, video_height=240)))
    after_info = await s.entry(e.id)
    assert after_info.source_media_info_id == mi.id and after_info.duration_ms == 3000
    await s.complete(extract, {"media_info_id": mi.id, "duration_ms": 3000})

    e2 = await s.entry(e.id)
    assert e2.state == Entry.PROCESSING and len(e2.job_ids) == 3
    assert all(fa.job_id for fa in e2.flavor_assets)
    t1 = await s.lease("TRANSCODE")
    t2 = await s.lease("TRANSCODE")
    by_fa = {}
    for t in (t1, t2):
        p = json_format.MessageToDict(t.job.params, preserving_proto_field_name=True)
        assert p["source"] == src and p["entry_id"] == e.id and len(p["outputs"]) == 1
        out = p["outputs"][0]
        assert out["path"].startswith(f"renditions/{e.id}/") and out["path"].endswith(".mp4")
        assert t.job.metadata["entry_step"] == "flavor:" + out["flavor_asset_id"]
        assert t.job.template_id == "tiny-ladder"
        by_fa[out["flavor_asset_id"]] = (t, out)
    small = next(fa for fa in e2.flavor_assets if fa.output_name == "small")
    assert by_fa[small.id][1]["width"] == 160 and by_fa[small.id][1]["video_codec"] == "h264"

    t, out = by_fa[small.id]
    await s.complete(t, {"outputs": [{"name": "small", "flavor_asset_id": small.id, "path": out["path"],
                                      "size_bytes": 12345, "media_info_id": ""}]})
    check = await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=t.job.id))
    assert not check.done and check.entry.state == Entry.PROCESSING
    fa_small = next(fa for fa in check.entry.flavor_assets if fa.id == small.id)
    assert fa_small.state == mres.FlavorAsset.READY and fa_small.size_bytes == 12345 and fa_small.path == out["path"]

    other_id = next(k for k in by_fa if k != small.id)
    t, out = by_fa[other_id]
    await s.complete(t, {"outputs": [{"name": "audio", "flavor_asset_id": other_id, "path": out["path"],
                                      "size_bytes": 999}]})
    done = await s.entry(e.id)
    assert done.state == Entry.READY and not done.HasField("error")
    assert all(fa.state == mres.FlavorAsset.READY for fa in done.flavor_assets)
    check = await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=e.job_ids[0]))
    assert check.done and check.entry.state == Entry.READY


async def test_failed_job_sets_error_and_a_rerun_recovers_the_entry(s: Stubs) -> None:
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=source_file(s))))
    extract = await s.lease("EXTRACT_MEDIA")
    await s.complete(extract, {"duration_ms": 1000})
    t = await s.lease("TRANSCODE")
    await s.workers.FailJob(wsvc.FailJobRequest(
        job_id=t.job.id, lease_token=t.lease_token,
        error=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="source is not a readable media file")))
    bad = await s.entry(e.id)
    assert bad.state == Entry.ERROR
    assert bad.error.code == code_pb2.INVALID_ARGUMENT
    assert t.job.id in bad.error.message and "not a readable media file" in bad.error.message
    assert bad.flavor_assets[0].state == mres.FlavorAsset.ERROR
    check = await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=t.job.id))
    assert not check.done and check.entry.state == Entry.ERROR

    rerun = await s.jobs.RerunJob(svc.RerunJobRequest(id=t.job.id))
    assert (await s.entry(e.id)).job_ids[-1] == rerun.id
    t2 = await s.lease("TRANSCODE")
    assert t2.job.id == rerun.id
    assert (await s.entry(e.id)).state == Entry.PROCESSING
    await s.complete(t2, {"outputs": [{"flavor_asset_id": bad.flavor_assets[0].id, "path": "p.mp4", "size_bytes": 1}]})
    ok = await s.entry(e.id)
    assert ok.state == Entry.READY and not ok.HasField("error") and ok.flavor_assets[0].job_id == rerun.id


async def test_aborted_extract_sets_error_and_delete_aborts_open_jobs(s: Stubs) -> None:
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=source_file(s))))
    await s.jobs.AbortJob(svc.AbortJobRequest(id=e.job_ids[0], reason="operator"))
    bad = await s.entry(e.id)
    assert bad.state == Entry.ERROR and "aborted: operator" in bad.error.message

    e2 = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="y", source_uri=source_file(s))))
    await s.media.DeleteEntry(msvc.DeleteEntryRequest(id=e2.id))
    job = await s.jobs.GetJob(svc.GetJobRequest(id=e2.job_ids[0]))
    assert job.state == Job.ABORTED and e2.id in job.abort_reason


async def test_check_entry_is_done_needs_a_job_of_an_entry(s: Stubs) -> None:
    job = await s.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE"))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=job.id))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(ei.value).reason == "JOB_HAS_NO_ENTRY"
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id="01HA255YE6H6DEETJ5M6595ZDA"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_client_made_job_naming_an_entry_joins_its_processing(s: Stubs) -> None:
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="no source")))
    job = await s.jobs.CreateJob(svc.CreateJobRequest(type="THUMBNAIL", metadata={"entry_id": e.id,
                                                                                   "entry_step": "thumbs"}))
    assert (await s.entry(e.id)).job_ids == [job.id]
    leased = await s.lease("THUMBNAIL")
    assert (await s.entry(e.id)).state == Entry.PROCESSING
    await s.complete(leased, {})
    check = await s.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=job.id))
    assert check.done and check.entry.state == Entry.READY


# -- media info ---------------------------------------------------------------------------


def full_media_info(entry_id: str, flavor_asset_id: str = "") -> mres.MediaInfo:
    """A record with every field set to a distinct non-default value."""
    mi = mres.MediaInfo(entry_id=entry_id, flavor_asset_id=flavor_asset_id)
    n = 1
    for f in mres.MediaInfo.DESCRIPTOR.fields:
        if f.name in ("id", "entry_id", "flavor_asset_id", "create_time"):
            continue
        if f.type == f.TYPE_STRING:
            setattr(mi, f.name, f"{f.name}-value")
        elif f.type == f.TYPE_BOOL:
            setattr(mi, f.name, True)
        elif f.type == f.TYPE_ENUM:
            setattr(mi, f.name, 1)
        elif f.type == f.TYPE_DOUBLE:
            setattr(mi, f.name, n + 0.5)
        elif f.name == "video_rotation":
            mi.video_rotation = 90
        else:
            setattr(mi, f.name, n)
        n += 1
    return mi


async def test_media_info_keeps_every_field_and_lists_by_flavor(s: Stubs) -> None:
    await create_template(s)
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="x", source_uri=source_file(s), template_id="tiny-ladder")))
    fa = e.flavor_assets[0]
    src = full_media_info(e.id)
    added = await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=src, request_id="m1"))
    again = await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=src, request_id="m1"))
    assert again.id == added.id
    got = await s.media.GetMediaInfo(msvc.GetMediaInfoRequest(id=added.id))
    expect = mres.MediaInfo()
    expect.CopyFrom(src)
    expect.id = added.id
    expect.create_time.CopyFrom(got.create_time)
    assert got == expect
    flav = await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=full_media_info(e.id, fa.id)))
    assert (await s.entry(e.id)).flavor_assets[0].media_info_id == flav.id
    everything = await s.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id))
    assert [m.id for m in everything.media_infos] == [added.id, flav.id]
    only_source = await s.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id, flavor_asset_id="source"))
    assert [m.id for m in only_source.media_infos] == [added.id]
    only_fa = await s.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id, flavor_asset_id=fa.id))
    assert [m.id for m in only_fa.media_infos] == [flav.id]
    paged = await s.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id, page_size=1))
    rest = await s.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id, page_size=1,
                                                                   page_token=paged.next_page_token))
    assert [m.id for m in list(paged.media_infos) + list(rest.media_infos)] == [added.id, flav.id] and not rest.next_page_token

    for mi, code, reason in [
        (mres.MediaInfo(entry_id="01HA255YE6H6DEETJ5M6595ZDA"), grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND"),
        (mres.MediaInfo(entry_id=e.id, flavor_asset_id="01HA255YE6H6DEETJ5M6595ZDA"), grpc.StatusCode.NOT_FOUND,
         "FLAVOR_ASSET_NOT_FOUND"),
        (mres.MediaInfo(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (mres.MediaInfo(entry_id=e.id, video_width=-1), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=mi))
        assert ei.value.code() == code and error_info(ei.value).reason == reason


# -- job templates ----------------------------------------------------------------------------


async def test_templates_crud_and_built_ins(s: Stubs) -> None:
    listed = await s.media.ListJobTemplates(msvc.ListJobTemplatesRequest())
    ids = [t.id for t in listed.job_templates]
    assert ids[:5] == ["mp4-h264-1080p", "mp4-h264-720p", "mp4-h264-360p", "mp4-h264-ladder", "audio-aac"]
    assert all(t.built_in for t in listed.job_templates)
    made = await create_template(s, "zz-mine")
    await create_template(s, "aa-mine")
    assert not made.built_in and made.create_time.seconds > 0
    pages, token = [], ""
    while True:
        r = await s.media.ListJobTemplates(msvc.ListJobTemplatesRequest(page_size=2, page_token=token))
        pages += [t.id for t in r.job_templates]
        token = r.next_page_token
        if not token:
            break
    assert pages == ids + ["aa-mine", "zz-mine"]

    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await create_template(s, "zz-mine")
    assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS and error_info(ei.value).reason == "TEMPLATE_EXISTS"
    upd = mres.JobTemplate(id="zz-mine", description="now with one output", outputs=[TWO_OUTPUTS.outputs[1]])
    changed = await s.media.UpdateJobTemplate(msvc.UpdateJobTemplateRequest(
        job_template=upd, update_mask=field_mask_pb2.FieldMask(paths=["description", "outputs"])))
    assert changed.description == "now with one output" and [o.name for o in changed.outputs] == ["audio"]
    assert changed.display_name == "tiny ladder"  # not in the mask: kept
    for req, code, reason in [
        (msvc.UpdateJobTemplateRequest(job_template=mres.JobTemplate(id="mp4-h264-720p", description="x"),
                                       update_mask=field_mask_pb2.FieldMask(paths=["description"])),
         grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_BUILT_IN"),
        (msvc.UpdateJobTemplateRequest(job_template=mres.JobTemplate(id="zz-mine"),
                                       update_mask=field_mask_pb2.FieldMask(paths=["built_in"])),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await s.media.UpdateJobTemplate(req)
        assert ei.value.code() == code and error_info(ei.value).reason == reason

    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.DeleteJobTemplate(msvc.DeleteJobTemplateRequest(id="audio-aac"))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await s.media.DeleteJobTemplate(msvc.DeleteJobTemplateRequest(id="zz-mine"))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.GetJobTemplate(msvc.GetJobTemplateRequest(id="zz-mine"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and error_info(ei.value).reason == "TEMPLATE_NOT_FOUND"
    await s.media.DeleteJobTemplate(msvc.DeleteJobTemplateRequest(id="zz-mine", allow_missing=True))


async def test_invalid_templates_name_each_bad_field(s: Stubs) -> None:
    bad = mres.JobTemplate(outputs=[
        mres.OutputSpec(name="a", container="mkv", video_codec="vp9", width=641, preset="turbo"),
        mres.OutputSpec(name="a", container="mp4"),
    ])
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=bad, job_template_id="ok-id"))
    fv = field_violations(ei.value)
    for f in ("job_template.outputs[0].container", "job_template.outputs[0].video_codec",
              "job_template.outputs[0].width", "job_template.outputs[0].preset", "job_template.outputs[1].name",
              "job_template.outputs[1]"):
        assert f in fv, (f, fv)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TWO_OUTPUTS, job_template_id="A!"))
    assert "job_template_id" in field_violations(ei.value)


async def test_create_job_with_a_template_copies_its_outputs(s: Stubs) -> None:
    await create_template(s)
    job = await s.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", template_id="tiny-ladder"))
    assert job.template_id == "tiny-ladder"
    outs = json_format.MessageToDict(job.params, preserving_proto_field_name=True)["outputs"]
    assert [o["name"] for o in outs] == ["small", "audio"] and outs[0]["width"] == 160
    own = struct_pb2.Struct()
    own.update({"outputs": [{"name": "mine"}]})
    kept = await s.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", template_id="audio-aac", params=own))
    assert json_format.MessageToDict(kept.params)["outputs"] == [{"name": "mine"}]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await s.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", template_id="no-such-one"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and error_info(ei.value).reason == "TEMPLATE_NOT_FOUND"


async def _extract_with_size(s: Stubs, outputs: list[mres.OutputSpec], width: int, height: int) -> Entry:
    tid = f"t-{len(outputs)}-{width}-{int(outputs[0].allow_upscale)}"
    await s.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(
        job_template=mres.JobTemplate(outputs=outputs), job_template_id=tid))
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="x", source_uri=source_file(s), template_id=tid)))
    extract = await s.lease("EXTRACT_MEDIA")
    mi = await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=mres.MediaInfo(
        entry_id=e.id, video_width=width, video_height=height, container_duration_ms=1000)))
    await s.complete(extract, {"media_info_id": mi.id, "duration_ms": 1000})
    return await s.entry(e.id)


def _video(name: str, w: int, h: int, upscale: bool = False) -> mres.OutputSpec:
    return mres.OutputSpec(name=name, container="mp4", video_codec="h264", width=w, height=h, allow_upscale=upscale)


async def test_outputs_larger_than_the_source_are_skipped_unless_upscaling_is_allowed(s: Stubs) -> None:
    audio = mres.OutputSpec(name="audio", container="mp4", audio_codec="aac")
    e = await _extract_with_size(s, [_video("big", 640, 480), _video("small", 160, 120), audio], 320, 240)
    states = {fa.output_name: fa.state for fa in e.flavor_assets}
    assert states == {"big": mres.FlavorAsset.NOT_APPLICABLE, "small": mres.FlavorAsset.QUEUED,
                      "audio": mres.FlavorAsset.QUEUED}
    assert len(e.job_ids) == 3  # extract + two transcodes
    for _ in range(2):
        t = await s.lease("TRANSCODE")
        await s.complete(t, {"outputs": []})
    done = await s.entry(e.id)
    assert done.state == Entry.READY
    assert next(fa for fa in done.flavor_assets if fa.output_name == "big").state == mres.FlavorAsset.NOT_APPLICABLE


async def test_allow_upscale_and_the_smallest_output_when_all_are_too_large(s: Stubs) -> None:
    e = await _extract_with_size(s, [_video("big", 640, 480, upscale=True)], 320, 240)
    assert e.flavor_assets[0].state == mres.FlavorAsset.QUEUED and e.flavor_assets[0].job_id
    e = await _extract_with_size(s, [_video("p1080", 0, 1080), _video("p720", 0, 720)], 320, 240)
    states = {fa.output_name: fa.state for fa in e.flavor_assets}
    assert states == {"p1080": mres.FlavorAsset.NOT_APPLICABLE, "p720": mres.FlavorAsset.QUEUED}


# -- everything stays readable by a client with gRPC's default 4 MiB limit ----------------------


async def test_media_info_pages_stop_at_the_message_budget_for_4_mib_clients(s: Stubs) -> None:
    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="big infos")))
    ids = []
    for i in range(25):  # 25 x 180 KB: more than one 4 MiB message
        mi = mres.MediaInfo(entry_id=e.id, raw_data="r" * 60_000, multi_stream_info="m" * 60_000,
                            content_streams="c" * 60_000)
        ids.append((await s.media.AddMediaInfo(msvc.AddMediaInfoRequest(media_info=mi))).id)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{s.app.port}") as ch:  # default 4 MiB receive limit
        media = media_service_pb2_grpc.MediaServiceStub(ch)
        got: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=e.id, page_size=1000,
                                                                         page_token=token))
            assert page.ByteSize() < 4 * 1024 * 1024
            got += [m.id for m in page.media_infos]
            pages += 1
            token = page.next_page_token
            if not token:
                break
    assert got == ids and pages >= 2


async def test_an_entry_rerun_many_times_keeps_its_latest_jobs_and_a_bounded_job_list(s: Stubs) -> None:
    from mediajobs.server.store import entries as store_entries

    e = await s.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="x", source_uri=source_file(s))))
    extract = await s.lease("EXTRACT_MEDIA")
    await s.complete(extract, {"duration_ms": 1000})
    t = await s.lease("TRANSCODE")
    await s.workers.FailJob(wsvc.FailJobRequest(job_id=t.job.id, lease_token=t.lease_token,
                                                error=status_pb2.Status(message="boom")))
    last = t.job
    for _ in range(store_entries.MAX_ENTRY_JOB_IDS + 20):
        last = await s.jobs.RerunJob(svc.RerunJobRequest(id=last.id))
        await s.jobs.AbortJob(svc.AbortJobRequest(id=last.id))
    entry = await s.entry(e.id)
    assert len(entry.job_ids) <= store_entries.MAX_ENTRY_JOB_IDS
    assert entry.job_ids[0] == extract.job.id and entry.job_ids[-1] == last.id  # the latest of every step
    rerun = await s.jobs.RerunJob(svc.RerunJobRequest(id=last.id))
    t2 = await s.lease("TRANSCODE")
    assert t2.job.id == rerun.id
    await s.complete(t2, {"outputs": []})
    assert (await s.entry(e.id)).state == Entry.READY
