"""The Kaltura api_v3 dialect of the HTTP gateway, driven end to end by the
unmodified published client (`kalturaapiclient` 23.10.0) against a real
server with the gateway embedded: every seed operation of seeds 000 and 001
(bulk upload add/get/list/serve/serveLog/abort through both the core service
and the plugin's `bulkupload_bulk`, the batch actions through the client's
own transport, annotation addFromBulk/serveBulk), KS checks (forged,
expired, foreign, missing), projects kept apart, and the XML envelope for
every error, the gateway's own 404/405/413 included.

The client is synchronous (requests), so each of its calls runs in a thread
while the server and the gateway run on the test's event loop."""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

import aiohttp
import grpc
import pytest
import requests
from google.protobuf import duration_pb2
from KalturaClient import KalturaClient, KalturaConfiguration
from KalturaClient.Base import KalturaObjectFactory, KalturaParams
from KalturaClient.exceptions import KalturaException
from KalturaClient.Plugins.Annotation import KalturaAnnotationFilter
from KalturaClient.Plugins.Core import (KalturaBulkUploadAction, KalturaBulkUploadFilter, KalturaBulkUploadResultEntry,
                                        KalturaBulkUploadResultStatus, KalturaBulkUploadService, KalturaFilterPager,
                                        KalturaMediaInfo, KalturaSessionType)

from mediajobs.server.app import App
from mediajobs.server.gateway.kaltura import ks as ks_mod
from mediajobs.server.gateway.kaltura.convert import int_to_ulid, ulid_to_int
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc as bsvc_grpc
from mediajobs.v1 import job_service_pb2 as jsvc
from mediajobs.v1 import job_service_pb2_grpc as jsvc_grpc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc as wsvc_grpc

from conftest import FakeClock, start_app
from test_auth import make_key

T = TypeVar("T")
CSV = b"*title,description,tags\nLaunch,Keynote,\"event,2026\"\nArchive,Old talk,archive\n"
QUEUED, ABORTED = 1, 7  # KalturaBatchJobStatus


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking client call, in a thread (the server runs on this loop)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def kaltura(base: str, ks: Any = None, partner_id: int | None = None) -> KalturaClient:
    client = KalturaClient(KalturaConfiguration(serviceUrl=base))
    if ks is not None:
        client.setKs(ks)
    if partner_id is not None:
        client.setPartnerId(partner_id)
    return client


def batch(client: KalturaClient, action: str, **params: Any) -> Any:
    """A `batch` action through the client's own transport (the client has no
    batch service): strings as they are, objects with their toParams."""
    kp = KalturaParams()
    for name, value in params.items():
        if hasattr(value, "toParams"):
            kp.addObjectIfDefined(name, value)
        else:
            kp.put(name, value)
    client.queueServiceActionCall("batch", action, None, kp)
    return client.doQueue()


def kaltura_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> KalturaException:
    with pytest.raises(KalturaException) as e:
        fn(*args, **kwargs)
    return e.value


class Server:
    def __init__(self, app: App, clock: FakeClock | None = None) -> None:
        self.app = app
        self.clock = clock
        self.base = f"http://127.0.0.1:{app.gateway.port}"
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.bulk = bsvc_grpc.BulkUploadServiceStub(self.channel)
        self.jobs = jsvc_grpc.JobServiceStub(self.channel)
        self.media = msvc_grpc.MediaServiceStub(self.channel)
        self.workers = wsvc_grpc.WorkerServiceStub(self.channel)
        self.root: Path = app.cfg.storage_dir()

    async def lease(self, job_type: str, seconds: float = 60, metadata: Any = None) -> wsvc.LeasedJob:
        got = await self.workers.AcquireJobs(wsvc.AcquireJobsRequest(
            job_types=[job_type], no_wait=True, lease_duration=duration_pb2.Duration(seconds=int(seconds)),
            lock_key=res.LockKey(scheduler_id="1", worker_id="2", batch_index=3)), metadata=metadata)
        assert len(got.jobs) == 1, f"no {job_type} job to lease"
        return got.jobs[0]


@pytest.fixture
async def srv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    """--auth none, no partners file: any KS, the home project. No bulk
    runner (a test plays the external engine), leases swept only on demand."""
    monkeypatch.delenv(ks_mod.PARTNERS_ENV, raising=False)
    clock = FakeClock()
    app = await start_app(str(tmp_path / "db.sqlite"), clock=clock, http_listen="127.0.0.1:0", bulk_runners=0,
                          lease_sweep_interval_s=3600, storage_root=tmp_path / "storage")
    s = Server(app, clock)
    try:
        yield s
    finally:
        await s.channel.close()
        await app.stop(None)


async def add_upload(client: KalturaClient, path: Path, **kw: Any) -> Any:
    core = KalturaBulkUploadService(client)  # the core service, shadowed by the plugin's name on the client
    with open(path, "rb") as f:
        return await off_loop(core.add, -1, f, bulkUploadType="bulkUploadCsv.CSV", **kw)


async def test_bulk_upload_add_get_list_serve_and_abort(srv: Server, tmp_path: Path) -> None:
    client = kaltura(srv.base, ks="any-ks-will-do")
    path = tmp_path / "catalogue.csv"
    path.write_bytes(CSV)
    up = await add_upload(client, path, uploadedBy="alice", fileName="catalogue.csv")
    assert isinstance(up.id, int) and up.id >= 1, "a numeric id, or the client reads None"
    assert up.status.getValue() == QUEUED and up.uploadedBy == "alice" and up.fileName == "catalogue.csv"
    assert up.numOfObjects == 2 and up.bulkUploadType.getValue() == "bulkUploadCsv.CSV"
    assert up.logFileUrl.endswith(f"/bulkupload_bulk/action/serveLog?id={up.id}") and "ks" not in up.logFileUrl

    got = await off_loop(client.bulkUpload.bulk.get, up.id)
    assert (got.id, got.status.getValue(), got.uploadedOn) == (up.id, QUEUED, up.uploadedOn)
    same = await off_loop(KalturaBulkUploadService(client).get, up.id)
    assert same.id == up.id, "the core service (wire `bulkupload`) answers the same"
    native = await srv.bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest())
    assert [u.number for u in native.bulk_uploads] == [up.id] and native.bulk_uploads[0].uploaded_by == "alice"

    # serve: the original file, byte-exact, from the URL the client builds.
    url = await off_loop(client.bulkUpload.bulk.serve, up.id)
    assert "id=" in url and "ks=" in url
    served = await off_loop(requests.get, url, timeout=30)
    assert served.status_code == 200 and served.content == CSV
    core_url = await off_loop(KalturaBulkUploadService(client).serve, up.id)
    assert (await off_loop(requests.get, core_url, timeout=30)).content == CSV

    # Three more uploads: list pages, newest first; aborted ones are left out.
    second = await add_upload(client, path)
    third = await add_upload(client, path)
    fourth = await add_upload(client, path)
    pager = KalturaFilterPager()
    pager.pageSize, pager.pageIndex = 2, 2
    page = await off_loop(client.bulkUpload.bulk.list, KalturaBulkUploadFilter(), pager)
    assert page.totalCount == 4 and [u.id for u in page.objects] == [second.id, up.id]
    aborted = await off_loop(KalturaBulkUploadService(client).abort, third.id)
    assert aborted.id == third.id and aborted.status.getValue() == ABORTED
    aborted = await off_loop(client.bulkUpload.bulk.abort, fourth.id)
    assert aborted.status.getValue() == ABORTED
    listed = await off_loop(client.bulkUpload.bulk.list)
    assert listed.totalCount == 2 and [u.id for u in listed.objects] == [second.id, up.id]
    core_listed = await off_loop(KalturaBulkUploadService(client).list)
    assert [u.id for u in core_listed.objects] == [second.id, up.id]
    only_aborted = KalturaBulkUploadFilter()
    only_aborted.statusEqual = ABORTED
    listed = await off_loop(client.bulkUpload.bulk.list, only_aborted)
    assert sorted(u.id for u in listed.objects) == sorted([third.id, fourth.id])

    e = await off_loop(kaltura_error, client.bulkUpload.bulk.abort, third.id)
    assert e.code == "BULK_UPLOAD_FINISHED"
    e = await off_loop(kaltura_error, client.bulkUpload.bulk.get, 999_999)
    assert e.code == "BULK_UPLOAD_NOT_FOUND" and '"999999"' in e.message


async def test_batch_bulk_results_from_an_external_engine(srv: Server, tmp_path: Path) -> None:
    client = kaltura(srv.base)
    path = tmp_path / "catalogue.csv"
    path.write_bytes(CSV)
    up = await add_upload(client, path)
    leased = await srv.lease("BULK_UPLOAD")  # the engine holds the upload's job

    def result(line: int, status: str, **fields: Any) -> KalturaBulkUploadResultEntry:
        r = KalturaBulkUploadResultEntry()
        r.bulkUploadJobId, r.lineIndex, r.status, r.action = up.id, line, status, KalturaBulkUploadAction.ADD
        for k, v in fields.items():
            setattr(r, k, v)
        return r

    def add(r: KalturaBulkUploadResultEntry, token: str = leased.lease_token) -> Any:
        node = batch(client, "addBulkUploadResult", bulkUploadResult=r, leaseToken=token)
        return KalturaObjectFactory.create(node, "KalturaBulkUploadResult")

    first = await off_loop(add, result(1, KalturaBulkUploadResultStatus.IN_PROGRESS, title="Launch",
                                       referenceId="cat-1", sshPrivateKey="-----BEGIN nope"))
    assert isinstance(first, KalturaBulkUploadResultEntry)
    assert (first.bulkUploadJobId, first.lineIndex, first.status.getValue()) == (up.id, 1, "3")
    assert first.title == "Launch" and first.referenceId == "cat-1" and isinstance(first.id, int)
    assert first.sshPrivateKey is NotImplemented, "key material is dropped, never stored or shown"
    second = await off_loop(add, result(2, KalturaBulkUploadResultStatus.ERROR, errorDescription="no such file",
                                        errorCode="SOURCE_NOT_FOUND", errorType=0))
    assert second.status.getValue() == "1" and second.errorDescription == "no such file"
    assert second.errorCode == "SOURCE_NOT_FOUND" and second.errorType == 0

    def counts() -> dict[str, str]:
        node = batch(client, "countBulkUploadEntries", bulkUploadJobId=str(up.id), bulkUploadObjectType="1")
        return {item.findtext("key"): item.findtext("value") for item in node.findall("item")}

    assert await off_loop(counts) == {"created": "1", "error": "1"}
    # An upsert on (upload, line): line 1 again, now OK.
    await off_loop(add, result(1, KalturaBulkUploadResultStatus.OK, title="Launch"))
    assert await off_loop(counts) == {"created": "1", "error": "1"}
    last = await off_loop(lambda: KalturaObjectFactory.create(
        batch(client, "getBulkUploadLastResult", bulkUploadJobId=str(up.id)), "KalturaBulkUploadResult"))
    assert last.lineIndex == 2 and last.bulkUploadJobId == up.id
    open_count = await off_loop(lambda: batch(client, "updateBulkUploadResults", bulkUploadJobId=str(up.id)).text)
    assert open_count == "0"

    # The log has a row per record, with its result.
    log_url = await off_loop(client.bulkUpload.bulk.serveLog, up.id)
    log = (await off_loop(requests.get, log_url, timeout=30)).text
    assert ",1,OK," in log and ",2,ERROR," in log and "SOURCE_NOT_FOUND" in log and "no such file" in log
    assert "BEGIN nope" not in log

    # A stale lease token is refused; nothing is written.
    e = await off_loop(kaltura_error, add, result(2, KalturaBulkUploadResultStatus.OK), "not-the-token")
    assert e.code == "LEASE_LOST"
    assert await off_loop(counts) == {"created": "1", "error": "1"}
    e = await off_loop(kaltura_error, batch, client, "getBulkUploadLastResult", bulkUploadJobId="424242")
    assert e.code == "BULK_UPLOAD_NOT_FOUND"
    # The empty result is Kaltura's null (an upload without results).
    other = await add_upload(client, path)
    node = await off_loop(batch, client, "getBulkUploadLastResult", bulkUploadJobId=str(other.id))
    assert len(node) == 0 and not node.text


async def test_batch_media_info_entries_files_and_exclusive_jobs(srv: Server) -> None:
    client = kaltura(srv.base)
    entry = await srv.media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="clip")))

    info = KalturaMediaInfo()
    info.flavorAssetId, info.fileSize, info.containerFormat = entry.id, 2, "mov,mp4,m4a,3gp,3g2,mj2"
    info.videoWidth, info.videoHeight, info.videoFrameRate, info.scanType = 320, 180, 25.0, 1
    info.isFastStart, info.maxGOP, info.containerDuration, info.videoBitRateMode = 1, 50.0, 4000, 2
    made = await off_loop(lambda: KalturaObjectFactory.create(batch(client, "addMediaInfo", mediaInfo=info),
                                                              "KalturaMediaInfo"))
    assert isinstance(made.id, int) and made.flavorAssetId == entry.id and made.videoWidth == 320
    assert made.fileSize == 2 and made.scanType == 1 and made.isFastStart == 1 and made.videoFrameRate == 25.0
    stored = await srv.media.GetMediaInfo(msvc.GetMediaInfoRequest(id=int_to_ulid(made.id)))
    assert stored.entry_id == entry.id and stored.file_size_bytes == 2048 and stored.container_duration_ms == 4000
    assert stored.scan_type == mres.SCAN_TYPE_INTERLACED and stored.max_gop == 50 and stored.is_fast_start
    assert stored.video_bit_rate_mode == mres.BIT_RATE_MODE_VBR and ulid_to_int(stored.id) == made.id
    info.flavorAssetId = "01HA255YE6H6DEETJ5M6595ZDA"
    e = await off_loop(kaltura_error, batch, client, "addMediaInfo", mediaInfo=info)
    assert e.code == "FLAVOR_ASSET_ID_NOT_FOUND"

    # checkEntryIsDone: a job of the entry, by its numeric id or its ULID.
    job = await srv.jobs.CreateJob(jsvc.CreateJobRequest(type="THUMBNAIL", metadata={"entry_id": entry.id,
                                                                                      "entry_step": "thumbs"}))
    done = await off_loop(lambda: batch(client, "checkEntryIsDone", batchJobId=str(ulid_to_int(job.id))).text)
    assert done == "0"
    leased = await srv.lease("THUMBNAIL")
    await srv.workers.CompleteJob(wsvc.CompleteJobRequest(job_id=job.id, lease_token=leased.lease_token))
    done = await off_loop(lambda: batch(client, "checkEntryIsDone", batchJobId=job.id).text)
    assert done == "1"
    assert (await srv.media.GetEntry(msvc.GetEntryRequest(id=entry.id))).state == mres.Entry.READY
    e = await off_loop(kaltura_error, batch, client, "checkEntryIsDone", batchJobId="01HA255YE6H6DEETJ5M6595ZDA")
    assert e.code == "INVALID_BATCHJOB_ID"
    e = await off_loop(kaltura_error, batch, client, "checkEntryIsDone", batchJobId="not-a-job")
    assert e.code == "INVALID_BATCHJOB_ID"

    # checkFileExists: inside the storage root only.
    (srv.root / "in").mkdir(parents=True, exist_ok=True)
    (srv.root / "in" / "a.bin").write_bytes(b"12345")

    def exists(path: str, size: str) -> tuple[str | None, str | None]:
        node = batch(client, "checkFileExists", localPath=path, size=size)
        assert node.findtext("objectType") == "KalturaFileExistsResponse"
        return node.findtext("exists"), node.findtext("sizeOk")

    assert await off_loop(exists, "in/a.bin", "5.0") == ("1", "1")
    assert await off_loop(exists, "in/a.bin", "6.0") == ("1", "0")
    assert await off_loop(exists, "in/none.bin", "5.0") == ("0", "0")
    e = await off_loop(kaltura_error, exists, "../etc/passwd", "1")
    assert e.code == "INVALID_ARGUMENT" and ".." in e.message

    # freeExclusiveJob: a leased job goes back to the queue.
    work = await srv.jobs.CreateJob(jsvc.CreateJobRequest(type="TRANSCODE"))
    leased = await srv.lease("TRANSCODE")
    assert leased.job.id == work.id

    def free(token: str) -> Any:
        lock = {"objectType": "KalturaExclusiveLockKey", "schedulerId": "1", "workerId": "2", "batchIndex": "3"}
        kp = KalturaParams()
        kp.put("id", ulid_to_int(work.id))
        kp.add("lockKey", lock)
        kp.put("jobType", "0")  # KalturaBatchJobType CONVERT = TRANSCODE
        kp.put("resetExecutionAttempts", True)
        kp.put("leaseToken", token)
        client.queueServiceActionCall("batch", "freeExclusiveJob", None, kp)
        return client.doQueue()

    freed = await off_loop(free, leased.lease_token)
    assert freed.findtext("objectType") == "KalturaFreeJobResponse" and freed.findtext("jobType") == "0"
    assert freed.findtext("job/id") == str(ulid_to_int(work.id)) and freed.findtext("job/status") == "0"
    assert freed.findtext("queueSize") == "1"
    back = await srv.jobs.GetJob(jsvc.GetJobRequest(id=work.id))
    assert back.state == res.Job.PENDING and back.attempt_count == 0
    e = await off_loop(kaltura_error, free, leased.lease_token)
    assert e.code == "LEASE_LOST"

    # cleanExclusiveJobs: an expired lease goes back too.
    assert srv.clock is not None
    again = await srv.lease("TRANSCODE", seconds=5)
    srv.clock.advance(6)
    cleaned = await off_loop(lambda: batch(client, "cleanExclusiveJobs").text)
    assert cleaned == "1"
    assert (await srv.jobs.GetJob(jsvc.GetJobRequest(id=again.job.id))).state == res.Job.PENDING
    assert await off_loop(lambda: batch(client, "cleanExclusiveJobs").text) == "0"


def scenes(entry_id: str) -> bytes:
    return (f'<scenes><scene-annotation entryId="{entry_id}"><sceneStartTime>00:00:05.000</sceneStartTime>'
            f"<sceneEndTime>00:00:07.500</sceneEndTime><tags><tag>intro</tag></tags><sceneText>Welcome</sceneText>"
            f'</scene-annotation><scene-annotation entryId="{entry_id}"><sceneStartTime>00:00:09.000</sceneStartTime>'
            f"<sceneText>Second</sceneText></scene-annotation></scenes>").encode()


async def test_annotations_add_from_bulk_and_serve_bulk(srv: Server, tmp_path: Path) -> None:
    client = kaltura(srv.base)
    entry = await srv.media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="talk")))
    path = tmp_path / "cues.xml"
    path.write_bytes(scenes(entry.id))
    with open(path, "rb") as f:
        made = await off_loop(client.annotation.annotation.addFromBulk, f)
    assert made.totalCount == 2 and type(made.objects[0]).__name__ == "KalturaAnnotation"
    first = made.objects[0]
    assert (first.entryId, first.startTime, first.endTime, first.duration) == (entry.id, 5000, 7500, 2500)
    assert first.text == "Welcome" and first.tags == "intro" and first.cuePointType.getValue() == "annotation.Annotation"

    f_ = KalturaAnnotationFilter()
    f_.entryIdEqual = entry.id
    url = await off_loop(client.annotation.annotation.serveBulk, f_)
    whole = (await off_loop(requests.get, url, timeout=30)).text
    assert "Welcome" in whole and "Second" in whole and f'entryId="{entry.id}"' in whole
    pager = KalturaFilterPager()
    pager.pageSize, pager.pageIndex = 1, 2
    url = await off_loop(client.annotation.annotation.serveBulk, f_, pager)
    second_page = (await off_loop(requests.get, url, timeout=30)).text
    assert "Second" in second_page and "Welcome" not in second_page
    # What was served imports back (cuepoint_cuepoint takes the same actions).
    back = tmp_path / "back.xml"
    back.write_text(whole)
    with open(back, "rb") as f:
        again = await off_loop(client.cuePoint.cuePoint.addFromBulk, f)
    assert again.totalCount == 2 and {c.text for c in again.objects} == {"Welcome", "Second"}

    bad = tmp_path / "bad.xml"
    bad.write_bytes(scenes("01HA255YE6H6DEETJ5M6595ZDA"))
    with open(bad, "rb") as f:
        e = await off_loop(kaltura_error, client.annotation.annotation.addFromBulk, f)
    assert e.code == "CUE_POINTS_NOT_ALL_IMPORTED" and "2 cue point(s) refused" in e.message and "0 created" in e.message
    f_.tagsLike, f_.textLike = "intro", "x"
    url = await off_loop(client.annotation.annotation.serveBulk, f_)
    refused = (await off_loop(requests.get, url, timeout=30)).text
    assert "<code>FILTER_NOT_SUPPORTED</code>" in refused and "textLike" in refused


async def test_large_file_streams_and_numbers_map_back(srv: Server, tmp_path: Path) -> None:
    """Past StartBulkUpload's 3 MiB inline limit the gateway streams the file
    with WriteBulkUploadFile; ids given as ULIDs work as well as numbers."""
    client = kaltura(srv.base)
    rows = b"".join(b"Title %06d,A description long enough to make the file big,tag\n" % i for i in range(60_000))
    path = tmp_path / "big.csv"
    path.write_bytes(b"*title,description,tags\n" + rows)
    assert path.stat().st_size > 3 * 1024 * 1024
    up = await add_upload(client, path)
    assert up.numOfObjects == 60_000 and up.status.getValue() == QUEUED
    url = await off_loop(client.bulkUpload.bulk.serve, up.id)
    assert (await off_loop(requests.get, url, timeout=60)).content == path.read_bytes()
    native = (await srv.bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest())).bulk_uploads[0]
    by_ulid = await off_loop(batch, client, "countBulkUploadEntries", bulkUploadJobId=native.id)
    assert [i.findtext("value") for i in by_ulid.findall("item")] == ["0", "0"]


# -- credentials --------------------------------------------------------------------------------

SECRET_A = "partner-101-admin-secret"


def write_partners(path: Path, partners: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(partners))
    tmp.chmod(0o600)
    os.replace(tmp, path)  # a new inode: the gateway sees the change


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Server, Path, str, str]]:
    partners = tmp_path / "partners.json"
    write_partners(partners, {})
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0", bulk_runners=0,
                          kaltura_partners=str(partners))  # --kaltura-partners
    s = Server(app)
    try:
        home, acme = await make_key(app, "editor"), await make_key(app, "editor", project="acme")
        write_partners(partners, {"101": {"secret": SECRET_A, "api_key": home}, "202": {"api_key": acme}})
        yield s, partners, home, acme
    finally:
        await s.channel.close()
        await app.stop(None)


def session(secret: str, partner_id: int, expiry: int = 3600, type_: int = KalturaSessionType.ADMIN,
            privileges: str = "") -> bytes:
    return KalturaClient.generateSession(secret, "alice", type_, partner_id, expiry, privileges)


async def test_ks_sessions_map_onto_keys_and_projects(keyed: tuple[Server, Path, str, str], tmp_path: Path
                                                      ) -> None:
    srv, partners, home_key, acme_key = keyed
    path = tmp_path / "catalogue.csv"
    path.write_bytes(CSV)
    a = kaltura(srv.base, session(SECRET_A, 101), 101)
    up = await add_upload(a, path, uploadedBy="alice")
    assert up.uploadedBy == "alice" and up.uploadedByUserId.startswith("key:")
    native = await srv.bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=(await srv.bulk.ListBulkUploads(
        bsvc.ListBulkUploadsRequest(), metadata=[("authorization", f"Bearer {home_key}")])).bulk_uploads[0].id),
        metadata=[("authorization", f"Bearer {home_key}")])
    assert native.number == up.id

    # Partner 202 signs with its key's own text and sees another project.
    b = kaltura(srv.base, session(acme_key, 202), 202)
    e = await off_loop(kaltura_error, b.bulkUpload.bulk.get, up.id)
    assert e.code == "BULK_UPLOAD_NOT_FOUND"
    assert (await off_loop(b.bulkUpload.bulk.list)).totalCount == 0
    assert (await off_loop(a.bulkUpload.bulk.list)).totalCount == 1
    e = await off_loop(kaltura_error, batch, b, "countBulkUploadEntries", bulkUploadJobId=str(up.id))
    assert e.code == "BULK_UPLOAD_NOT_FOUND"

    # A serve URL needs the KS too.
    url = await off_loop(a.bulkUpload.bulk.serve, up.id)
    assert (await off_loop(requests.get, url, timeout=30)).content == CSV
    bare = re.sub(r"&?ks=[^&]*", "", url)
    refused = await off_loop(requests.get, bare, timeout=30)
    assert refused.status_code == 200 and "<code>MISSING_KS</code>" in refused.text

    # Forged, expired, unknown partner, wrong partner, user session, none at all.
    cases = [
        (kaltura(srv.base, session("not-the-secret-at-all", 101), 101), "INVALID_KS", "-1,INVALID_STR"),
        (kaltura(srv.base, session(SECRET_A, 101, expiry=-10), 101), "INVALID_KS", "-5,EXPIRED"),
        (kaltura(srv.base, session(SECRET_A, 303), 303), "INVALID_KS", "-2,INVALID_PARTNER"),
        (kaltura(srv.base, session(SECRET_A, 101), 202), "INVALID_KS", "-2,INVALID_PARTNER"),
        (kaltura(srv.base, "bm90IGEga3M=", 101), "INVALID_KS", "-1,INVALID_STR"),
        (kaltura(srv.base, session(SECRET_A, 101, type_=KalturaSessionType.USER), 101), "SERVICE_FORBIDDEN", "USER"),
        (kaltura(srv.base, session(SECRET_A, 101, privileges="iprestrict:10.0.0.1"), 101), "SERVICE_FORBIDDEN",
         "iprestrict"),
        (kaltura(srv.base), "MISSING_KS", "Missing KS"),
    ]
    for client, code, text in cases:
        e = await off_loop(kaltura_error, client.bulkUpload.bulk.get, up.id)
        assert (e.code, text in e.message) == (code, True), (code, e.code, e.message)
    assert SECRET_A not in e.message

    # session.start hands a KS to whoever knows the secret.
    starter = kaltura(srv.base)
    ks = await off_loop(starter.session.start, SECRET_A, "bob", KalturaSessionType.ADMIN, 101)
    assert (await off_loop(kaltura(srv.base, ks, 101).bulkUpload.bulk.get, up.id)).id == up.id
    e = await off_loop(kaltura_error, starter.session.start, "wrong-secret-wrong", "bob", 2, 101)
    assert e.code == "START_SESSION_ERROR"

    # The file is read again when it changes: a removed partner is refused.
    write_partners(partners, {"101": {"secret": SECRET_A, "api_key": home_key}})
    e = await off_loop(kaltura_error, b.bulkUpload.bulk.list)
    assert e.code == "INVALID_KS" and "INVALID_PARTNER" in e.message
    # A broken edit keeps the partners read before (and is logged).
    partners.write_text("{not json")
    assert (await off_loop(a.bulkUpload.bulk.get, up.id)).id == up.id


async def test_an_unreadable_partners_file_refuses_every_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv(ks_mod.PARTNERS_ENV, str(tmp_path / "missing.json"))  # the environment variable works too
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0")
    try:
        client = kaltura(f"http://127.0.0.1:{app.gateway.port}", session(SECRET_A, 101), 101)
        e = await off_loop(kaltura_error, client.bulkUpload.bulk.list)
        assert e.code == "INTERNAL_SERVERL_ERROR" and "partners file" in e.message
    finally:
        await app.stop(None)


def test_partner_files_are_checked() -> None:
    good = "mjk_" + "0" * 26 + "_" + "s" * 20
    assert ks_mod.parse_partners(json.dumps({"7": {"api_key": good}}))[7].secret == good
    for bad, why in [("[]", "JSON object"), ('{"x": {}}', "positive integer"), ('{"7": {"api_key": "nope"}}', "mjk_"),
                     (json.dumps({"7": {"api_key": good, "secret": "short"}}), "16-1024"),
                     (json.dumps({"7": {"api_key": good, "extra": 1}}), "unknown fields")]:
        with pytest.raises(ValueError, match=why):
            ks_mod.parse_partners(bad)


# -- the wire: encodings and the XML envelope for every error -------------------------------------


async def test_encodings_and_errors_are_kaltura_xml_with_http_200(srv: Server) -> None:
    base = f"{srv.base}/api_v3/service"
    path = srv.root / "upload.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiohttp.ClientSession() as s:
        async def code_of(method: str, url: str, **kw: Any) -> str:
            r = await s.request(method, url, **kw)
            body = await r.text()
            assert r.status == 200 and r.content_type == "text/xml", (r.status, body[:200])
            found = re.search(r"<code>([^<]*)</code>", body)
            return found.group(1) if found else body

        # A form post, the bracketed fields of the seeds' swagger, and bools as "True".
        form = aiohttp.FormData(quote_fields=False)  # the file's name as a browser sends it: a Windows path
        form.add_field("conversionProfileId", "-1")
        form.add_field("csvFileData", CSV, filename="C:\\Users\\me\\cat.csv", content_type="text/csv")
        r = await s.post(f"{base}/bulkupload/action/add", data=form)
        body = await r.text()
        number = int(re.search(r"<id>(\d+)</id>", body).group(1))  # type: ignore[union-attr]
        assert "<fileName>cat.csv</fileName>" in body and "<objectType>KalturaBulkUpload</objectType>" in body
        listed = await (await s.get(f"{base}/bulkupload_bulk/action/list",
                                    params={"bulkUploadFilter[objectType]": "KalturaBulkUploadFilter",
                                            "bulkUploadFilter[statusIn]": "0,1", "pager[pageSize]": "5"})).text()
        assert f"<id>{number}</id>" in listed and "<totalCount>1</totalCount>" in listed
        assert "<item><objectType>KalturaBulkUpload</objectType>" in listed
        got = await (await s.get(f"{base}/BulkUpload_Bulk/action/GET", params={"id": str(number)})).text()
        assert f"<id>{number}</id>" in got, "service and action names are case-insensitive"
        got = await (await s.post(f"{base}/bulkupload/action/get", data={"id": str(number)})).text()
        assert f"<id>{number}</id>" in got

        assert await code_of("GET", f"{base}/bulkupload/action/get", params={"id": "abc"}) == \
            "PROPERTY_VALIDATION_NUMERIC_VALUE"
        assert await code_of("POST", f"{base}/bulkupload/action/get", json={"id__null": ""}) == \
            "MISSING_MANDATORY_PARAMETER"
        assert await code_of("POST", f"{base}/bulkupload/action/add", json={"conversionProfileId": "-1"}) == \
            "MISSING_MANDATORY_PARAMETER"
        assert await code_of("POST", f"{base}/bulkupload/action/get", data=b"{nope",
                             headers={"Content-Type": "application/json"}) == "INVALID_PARAMETER"
        assert await code_of("POST", f"{base}/bulkupload/action/get", json=[1]) == "INVALID_PARAMETER"
        deep = {"a": "x"}
        for _ in range(12):
            deep = {"a": deep}  # type: ignore[dict-item]
        assert await code_of("POST", f"{base}/bulkupload/action/get", json=deep) == "INVALID_PARAMETER"
        assert await code_of("GET", f"{base}/nosuch/action/get") == "SERVICE_DOES_NOT_EXISTS"
        assert await code_of("GET", f"{base}/batch/action/nosuch") == "ACTION_DOES_NOT_EXISTS"
        assert await code_of("PUT", f"{base}/batch/action/cleanExclusiveJobs") == "ACTION_FORBIDDEN"
        assert await code_of("GET", f"{srv.base}/api_v3/nowhere") == "SERVICE_DOES_NOT_EXISTS"
        big = b'{"id": "' + b"1" * (17 * 1024 * 1024) + b'"}'
        assert await code_of("POST", f"{base}/bulkupload/action/get", data=big,
                             headers={"Content-Type": "application/json"}) == "MAX_FILE_SIZE_EXCEEDED"
        assert await code_of("GET", f"{base}/bulkupload/action/add", params={"bulkUploadType": "bulkUploadXml.XML"}
                             ) == "MISSING_MANDATORY_PARAMETER"
        form = aiohttp.FormData()
        form.add_field("bulkUploadType", "bulkUploadXml.XML")
        form.add_field("csvFileData", b"<mrss/>", filename="x.xml")
        assert await code_of("POST", f"{base}/bulkupload/action/add", data=form) == "INVALID_ENUM_VALUE"
        form = aiohttp.FormData()
        form.add_field("json", json.dumps({"conversionProfileId": "no-such-template"}))
        form.add_field("csvFileData", CSV, filename="x.csv")
        assert await code_of("POST", f"{base}/bulkupload/action/add", data=form) == "CONVERSION_PROFILE_ID_NOT_FOUND"
        # The old index.php form, with service and action as parameters.
        r = await s.get(f"{srv.base}/api_v3/index.php", params={"service": "batch", "action": "cleanExclusiveJobs"})
        assert "<result>0</result>" in await r.text()
        assert await code_of("POST", f"{base}/bulkupload/action/get", data=b"--xyz\r\nbroken",
                             headers={"Content-Type": "multipart/form-data; boundary=xyz"}) == "INVALID_PARAMETER"
        # Text that XML 1.0 cannot carry is replaced, never sent raw.
        r = await s.get(f"{base}/batch/action/checkFileExists", params={"localPath": "a\x01b", "size": "1"})
        assert "\x01" not in await r.text()
