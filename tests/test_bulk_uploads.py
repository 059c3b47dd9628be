"""BulkUploadService over a real channel, on SQLite and PostgreSQL: uploads
(inline and streamed, resumed, checked), the runner inside the server
applying records, a result for every record, results following their
entries, the log and the failed-records file, abort, re-run, validation."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from google.rpc import status_pb2

from mediajobs.server.app import App
from mediajobs.server.store import jobs as store_jobs
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, field_violations, start_app

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
Job = res.Job


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    root = tmp_path / "storage"
    app = await start_app(db_url, storage_root=root)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield {"app": app, "root": root, "bulk": bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch),
                   "media": media_service_pb2_grpc.MediaServiceStub(ch),
                   "workers": worker_service_pb2_grpc.WorkerServiceStub(ch)}
    finally:
        await app.stop(None)


async def until_state(bulk: Any, upload_id: str, *states: int) -> BulkUpload:
    """Follow WatchBulkUpload until the upload is in one of `states`."""
    last = None
    async for u in bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=upload_id), timeout=60):
        last = u
        if u.state in states:
            return u
    raise AssertionError(f"watch ended in {BulkUpload.State.Name(last.state) if last else None}, wanted {states}")


async def start_inline(bulk: Any, content: bytes, **spec: Any) -> BulkUpload:
    return await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(
        bulk_upload=BulkUpload(file_name="catalogue.csv", **spec), content=content))


async def all_results(bulk: Any, upload_id: str, **kw: Any) -> list[Result]:
    out: list[Result] = []
    token = ""
    while True:
        page = await bulk.ListBulkUploadResults(bsvc.ListBulkUploadResultsRequest(
            id=upload_id, page_token=token, page_size=2, **kw))
        out += page.results
        token = page.next_page_token
        if not token:
            return out


def reason(r: Result) -> str:
    from google.rpc import error_details_pb2

    for d in r.error.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info.reason
    return ""


PLAIN = (b"name,description,tags,reference_id,label:team\n"
         b"First,one,\"a,b\",ref-1,news\n"
         b"# a comment, not a record\n"
         b"\n"
         b",no name here,,ref-2,news\n"
         b"Third,three,,ref-3,sport\n")


async def test_inline_plain_csv_gives_every_record_one_result(env: dict[str, Any]) -> None:
    bulk, media = env["bulk"], env["media"]
    u = await start_inline(bulk, PLAIN)
    assert u.state == BulkUpload.QUEUED and u.counts.total_records == 3 and u.counts.skipped_lines == 2
    assert u.sha256 == hashlib.sha256(PLAIN).hexdigest() and u.number >= 1 and u.job_id
    assert list(u.columns)[:4] == ["name", "description", "tags", "reference_id"]
    done = await until_state(bulk, u.id, BulkUpload.PARTIALLY_SUCCEEDED)
    c = done.counts
    assert (c.applied, c.ok, c.error, c.in_progress, c.not_processed, c.objects_created) == (3, 2, 1, 0, 0, 2)
    results = await all_results(bulk, u.id)
    assert [(r.record_index, r.line_number, Result.Status.Name(r.status)) for r in results] == [
        (1, 2, "OK"), (2, 5, "ERROR"), (3, 6, "OK")]
    assert reason(results[1]) == "MISSING_VALUE" and results[1].error_type == Result.VALIDATION
    entry = await media.GetEntry(msvc.GetEntryRequest(id=results[0].object_id))
    assert (entry.name, list(entry.tags), entry.reference_id, entry.labels["team"]) == ("First", ["a", "b"], "ref-1",
                                                                                        "news")
    assert results[0].object_state == "PENDING"  # no source: nothing to process, the record is OK
    counted = await bulk.CountBulkUploadResults(bsvc.CountBulkUploadResultsRequest(id=u.id))
    assert (counted.created, counted.error) == (2, 1)
    last = await bulk.GetBulkUploadLastResult(bsvc.GetBulkUploadLastResultRequest(id=u.id))
    assert last.result.record_index == 3
    # The same request_id returns the same upload (and applies nothing again).
    again = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(), content=PLAIN,
                                                                   request_id="r1"))
    same = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(), content=PLAIN,
                                                                  request_id="r1"))
    assert again.id == same.id != u.id


async def test_streamed_upload_resumes_and_is_served_byte_exact(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    body = b"\xef\xbb\xbfname;reference_id\r\n" + b"".join(
        f"Clip {i};r{i}\r\n".encode() for i in range(5000))
    u = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(
        file_size_bytes=len(body), csv=BulkUpload.CsvOptions(delimiter=";"))))
    assert u.state == BulkUpload.UPLOADING
    half = len(body) // 2

    def msgs(offset: int, parts: list[bytes], finish: bool = False, sha: str = "") -> list[bsvc.WriteBulkUploadFileRequest]:
        out = [bsvc.WriteBulkUploadFileRequest(upload_id=u.id, write_offset=offset)]
        out += [bsvc.WriteBulkUploadFileRequest(data=p, crc32=zlib.crc32(p)) for p in parts]
        if finish:
            out.append(bsvc.WriteBulkUploadFileRequest(finish_write=True, sha256=sha))
        return out

    first = await bulk.WriteBulkUploadFile(iter(msgs(0, [body[:1000], body[1000:half]])))
    assert first.committed_size == half and first.bulk_upload.state == BulkUpload.UPLOADING
    # A wrong offset names where to resume; a corrupted message is not stored.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.WriteBulkUploadFile(iter(msgs(10, [b"x"])))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_info(e.value).metadata["committed_size"] == str(half)
    bad = bsvc.WriteBulkUploadFileRequest(data=body[half:], crc32=zlib.crc32(body[half:]) ^ 1)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.WriteBulkUploadFile(iter([bsvc.WriteBulkUploadFileRequest(upload_id=u.id, write_offset=half), bad]))
    assert e.value.code() == grpc.StatusCode.DATA_LOSS and error_info(e.value).reason == "CHUNK_CHECKSUM_MISMATCH"
    status = await bulk.QueryBulkUploadWriteStatus(bsvc.QueryBulkUploadWriteStatusRequest(upload_id=u.id))
    assert (status.committed_size, status.complete) == (half, False)
    # A wrong sha256 at the end is DATA_LOSS and leaves the upload writable.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.WriteBulkUploadFile(iter(msgs(half, [body[half:]], finish=True, sha="0" * 64)))
    assert e.value.code() == grpc.StatusCode.DATA_LOSS and error_info(e.value).reason == "SHA256_MISMATCH"
    done = await bulk.WriteBulkUploadFile(iter([
        bsvc.WriteBulkUploadFileRequest(upload_id=u.id, write_offset=len(body), finish_write=True,
                                        sha256=hashlib.sha256(body).hexdigest())]))
    assert done.bulk_upload.state in (BulkUpload.QUEUED, BulkUpload.PROCESSING, BulkUpload.SUCCEEDED)
    assert done.bulk_upload.counts.total_records == 5000
    served = b""
    async for m in bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(id=u.id)):
        assert zlib.crc32(m.data) == m.crc32
        served += m.data
    assert served == body
    part = b"".join([m.data async for m in bulk.ReadBulkUploadFile(
        bsvc.ReadBulkUploadFileRequest(id=u.id, read_offset=3, read_limit=10))])
    assert part == body[3:13]
    end = await until_state(bulk, u.id, BulkUpload.SUCCEEDED)
    assert end.counts.ok == 5000 and end.counts.objects_created == 5000


async def test_kaltura_v3_actions_each_get_a_result(env: dict[str, Any]) -> None:
    bulk, media = env["bulk"], env["media"]
    made = await media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="old", reference_id="k-1")))
    gone = await media.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(name="to delete")))
    body = ("*title,description,referenceId,entryId,action,category\n"
            "New one,d,k-9,,1,Cats>Small\n"
            f"Renamed,,,{made.id},update,\n"
            f",,,{gone.id},delete,\n"
            "Upserted,,k-1,,add_or_update,\n"
            "X,,,,bogus,\n").encode()
    u = await start_inline(bulk, body)
    assert u.csv_version == 3 and any("category" in w for w in u.warnings)
    done = await until_state(bulk, u.id, BulkUpload.PARTIALLY_SUCCEEDED)
    results = await all_results(bulk, u.id)
    assert [Result.Status.Name(r.status) for r in results] == ["OK", "OK", "OK", "OK", "ERROR"]
    assert [Result.Action.Name(r.action) for r in results[:4]] == ["ADD", "UPDATE", "DELETE", "ADD_OR_UPDATE"]
    assert reason(results[4]) == "INVALID_ACTION"
    assert results[3].object_id == made.id  # matched on referenceId
    entry = await media.GetEntry(msvc.GetEntryRequest(id=made.id))
    assert entry.name == "Upserted"
    new = await media.GetEntry(msvc.GetEntryRequest(id=results[0].object_id))
    assert new.labels["kaltura.category"] == "Cats>Small"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await media.GetEntry(msvc.GetEntryRequest(id=gone.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert done.counts.error == 1


async def test_files_refused_as_a_whole(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    for body, why in ((b"name,colour\nx,red\n", "UNKNOWN_COLUMNS"),
                      (b"*title,sshPrivateKey\nx,KEY\n", "SSH_KEYS_NOT_ACCEPTED")):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await start_inline(bulk, body)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value).reason == why
    ok = await start_inline(bulk, b"name,colour\nx,red\n", ignore_unknown_columns=True)
    await until_state(bulk, ok.id, BulkUpload.SUCCEEDED)
    (r,) = await all_results(bulk, ok.id)
    assert dict(r.plugins_data) == {"colour": "red"}
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(format=2)))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(
            csv=BulkUpload.CsvOptions(delimiter=":"), state=BulkUpload.QUEUED)))
    assert set(field_violations(e.value)) == {"bulk_upload.csv.delimiter", "bulk_upload.state"}
    # A streamed file refused at its end: the upload FAILED, its bytes gone.
    u = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload()))
    data = b"name,colour\nx,red\n"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.WriteBulkUploadFile(iter([
            bsvc.WriteBulkUploadFileRequest(upload_id=u.id, data=data, crc32=zlib.crc32(data), finish_write=True)]))
    assert error_info(e.value).reason == "UNKNOWN_COLUMNS"
    got = await bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=u.id))
    assert got.state == BulkUpload.FAILED and got.uploaded_bytes == 0 and "colour" in got.error.message


async def test_results_follow_entries_and_rerun_after_the_source_appears(env: dict[str, Any]) -> None:
    bulk, workers, root = env["bulk"], env["workers"], env["root"]
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.mov").write_bytes(b"not really a movie")
    body = b"name,source_uri\nA,in/a.mov\nB,in/b.mov\n"
    u = await start_inline(bulk, body)
    waiting = await until_state(bulk, u.id, BulkUpload.WAITING_FOR_OBJECTS)
    assert (waiting.counts.in_progress, waiting.counts.error) == (1, 1)
    a, b = await all_results(bulk, u.id)
    assert a.status == Result.IN_PROGRESS and a.object_state == "PENDING" and len(a.job_ids) == 1
    assert b.status == Result.ERROR and reason(b) == "SOURCE_NOT_FOUND"
    # The entry's processing fails: its record's result says so, the upload ends.
    got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["EXTRACT_MEDIA"], identity="t"))
    (leased,) = got.jobs
    await workers.FailJob(wsvc.FailJobRequest(job_id=leased.job.id, lease_token=leased.lease_token,
                                              error=status_pb2.Status(code=3, message="cannot decode")))
    ended = await until_state(bulk, u.id, BulkUpload.FAILED)
    a, b = await all_results(bulk, u.id)
    assert a.status == Result.ERROR and a.object_state == "ERROR" and "cannot decode" in a.object_error
    assert ended.counts.error == 2 and ended.counts.in_progress == 0
    # Put the missing file in place and re-run: only the failed records run again.
    (root / "in" / "b.mov").write_bytes(b"now here")
    rerun = await bulk.RerunBulkUpload(bsvc.RerunBulkUploadRequest(id=u.id))
    assert rerun.generation == 2 and rerun.job_id != u.job_id
    await until_state(bulk, u.id, BulkUpload.WAITING_FOR_OBJECTS)
    a2, b2 = await all_results(bulk, u.id)
    assert b2.status == Result.IN_PROGRESS and b2.attempts == 2 and b2.object_id
    assert a2.attempts == 2 and a2.object_id != a.object_id  # failed too: re-applied as a new entry


async def test_log_and_failed_records_file(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    body = b"name,description\n=HYPERLINK(\"x\"),+1\n,missing name\n@cmd,fine\n"
    u = await start_inline(bulk, body)
    await until_state(bulk, u.id, BulkUpload.PARTIALLY_SUCCEEDED)
    log = b"".join([m.data async for m in bulk.ReadBulkUploadLog(bsvc.ReadBulkUploadLogRequest(id=u.id))])
    rows = list(csv.reader(io.StringIO(log.decode())))
    assert rows[0][:2] == ["name", "description"] and rows[0][2:5] == ["line", "record", "result_status"]
    assert rows[1][:2] == ["'=HYPERLINK(\"x\")", "'+1"] and rows[1][4] == "OK"
    assert rows[2][4] == "ERROR" and rows[2][8] == "MISSING_VALUE" and rows[2][9] == "name"
    assert rows[3][0] == "'@cmd"
    jl = b"".join([m.data async for m in bulk.ReadBulkUploadLog(bsvc.ReadBulkUploadLogRequest(
        id=u.id, format=bsvc.ReadBulkUploadLogRequest.JSONL))])
    first = json.loads(jl.splitlines()[0])
    assert first["row_data"] == "=HYPERLINK(\"x\"),+1"  # stored and served verbatim
    failed = b"".join([m.data async for m in bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(
        id=u.id, selection=bsvc.ReadBulkUploadFileRequest.FAILED_RECORDS))])
    assert failed == b"name,description\n,missing name\n"
    entry = await env["media"].GetEntry(msvc.GetEntryRequest(id=(await all_results(bulk, u.id))[0].object_id))
    assert entry.name == "=HYPERLINK(\"x\")"


async def test_validate_only_validate_first_and_abort(env: dict[str, Any], tmp_path: Path) -> None:
    bulk, media = env["bulk"], env["media"]
    body = b"name,reference_id\nA,v-1\n,v-2\nC,v-3\n"
    v = await start_inline(bulk, body, validate_only=True)
    done = await until_state(bulk, v.id, BulkUpload.VALIDATED)
    assert (done.counts.ok, done.counts.error, done.counts.objects_created) == (2, 1, 0)
    first = await start_inline(bulk, body, error_policy=BulkUpload.VALIDATE_FIRST)
    failed = await until_state(bulk, first.id, BulkUpload.FAILED)
    assert (failed.counts.error, failed.counts.not_processed, failed.counts.objects_created) == (1, 2, 0)
    listed = await media.ListEntries(msvc.ListEntriesRequest(reference_id="v-1"))
    assert not listed.entries  # nothing created by either
    statuses = [Result.Status.Name(r.status) for r in await all_results(bulk, first.id)]
    assert statuses == ["NOT_PROCESSED", "ERROR", "NOT_PROCESSED"]


async def test_abort_a_queued_upload(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=tmp_path / "s", bulk_runners=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            u = await start_inline(bulk, b"name\nA\nB\n")
            aborted = await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=u.id, reason="wrong file"))
            assert aborted.state == BulkUpload.ABORTED and aborted.counts.not_processed == 2
            assert "wrong file" in aborted.error.message
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=u.id))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            results = await all_results(bulk, u.id)
            assert [r.status for r in results] == [Result.NOT_PROCESSED] * 2
            listed = await bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(states=[BulkUpload.ABORTED]))
            assert [x.id for x in listed.bulk_uploads] == [u.id] and listed.total_size == 1
    finally:
        await app.stop(None)


def _server(db: str, root: Path) -> Any:
    import os
    import subprocess
    import sys

    env = dict(os.environ, MEDIAJOBS_DATA_DIR=str(root.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediajobs.server", "--listen", "127.0.0.1:0", "--db", str(db),
         "--storage-root", str(root), "--durability", "fast"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on 127.0.0.1:" in line, line
    return proc, int(line.split("listening on 127.0.0.1:")[1].split()[0])


async def test_kill_9_halfway_resumes_and_no_record_makes_two_entries(db_url: str, tmp_path: Path) -> None:
    import signal

    db, root = db_url, tmp_path / "storage"
    n = 60_000
    body = b"name,reference_id\n" + b"".join(f"Item {i},ref-{i}\n".encode() for i in range(n))
    proc, port = _server(db, root)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            u = await start_inline(bulk, body)
            async for seen in bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=u.id), timeout=60):
                if seen.counts.applied > 0:
                    proc.send_signal(signal.SIGKILL)  # halfway: some batches committed, not all
                    break
        proc.wait(timeout=10)
        assert 0 < seen.counts.applied < n, "killed while applying"
        proc, port = _server(db, root)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            done = await until_state(bulk, u.id, BulkUpload.SUCCEEDED)  # the lease runs out, a runner resumes
            assert (done.counts.applied, done.counts.ok, done.counts.objects_created) == (n, n, n)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    from mediajobs.server.store import Store

    store = Store(db)  # reads the rows themselves: no entry twice, a result per record
    try:
        entries, distinct = store.read_sync(lambda d, p: d.execute_sql(
            "SELECT COUNT(*), COUNT(DISTINCT reference_id) FROM entries").fetchone())
        lines = store.read_sync(lambda d, p: d.execute_sql("SELECT COUNT(*) FROM bulk_upload_lines").fetchone()[0])
    finally:
        store.close()
    assert (entries, distinct, lines) == (n, n, n)


async def test_an_external_engine_adds_results_under_its_lease(tmp_path: Path) -> None:
    """Kaltura's batch.addBulkUploadResult, countBulkUploadEntries,
    getBulkUploadLastResult and updateBulkUploadResults, for an engine that
    applies the records itself (here: users, which mediajobs does not make)."""
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=tmp_path / "s", bulk_runners=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
            u = await start_inline(bulk, b"name\nalice\nbob\n")
            got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["BULK_UPLOAD"], identity="engine"))
            (leased,) = got.jobs
            assert leased.job.id == u.job_id
            running = await bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=u.id))
            assert running.state == BulkUpload.PROCESSING
            ok = Result(record_index=1, status=Result.OK, action=Result.ADD, object_type=BulkUpload.USER,
                        object_id="alice", kaltura_object_type="KalturaBulkUploadResultUser",
                        external_fields={"userId": "alice", "screenName": "Alice", "email": "a@example.com"})
            bad = Result(record_index=2, status=Result.ERROR, action=Result.ADD, object_type=BulkUpload.USER,
                         error=status_pb2.Status(code=6, message="user exists"), error_type=Result.OBJECT)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bulk.AddBulkUploadResults(bsvc.AddBulkUploadResultsRequest(
                    id=u.id, lease_token="not-the-token", results=[ok]))
            assert e.value.code() == grpc.StatusCode.ABORTED and error_info(e.value).reason == "LEASE_LOST"
            ssh = Result(record_index=1, status=Result.OK, external_fields={"sshPrivateKey": "KEY"})
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bulk.AddBulkUploadResults(bsvc.AddBulkUploadResultsRequest(
                    id=u.id, lease_token=leased.lease_token, results=[ssh]))
            assert error_info(e.value).reason == "SSH_KEYS_NOT_ACCEPTED"
            added = await bulk.AddBulkUploadResults(bsvc.AddBulkUploadResultsRequest(
                id=u.id, lease_token=leased.lease_token, results=[ok, bad]))
            assert (added.bulk_upload.counts.ok, added.bulk_upload.counts.error) == (1, 1)
            # An upsert per record: reporting record 2 again replaces its result.
            fixed = Result(record_index=2, status=Result.OK, action=Result.ADD, object_type=BulkUpload.USER,
                           object_id="bob")
            again = await bulk.AddBulkUploadResults(bsvc.AddBulkUploadResultsRequest(
                id=u.id, lease_token=leased.lease_token, results=[fixed]))
            assert (again.bulk_upload.counts.ok, again.bulk_upload.counts.error, again.bulk_upload.counts.applied) == (
                2, 0, 2)
            counted = await bulk.CountBulkUploadResults(bsvc.CountBulkUploadResultsRequest(id=u.id))
            assert (counted.created, counted.error) == (2, 0)
            last = await bulk.GetBulkUploadLastResult(bsvc.GetBulkUploadLastResultRequest(id=u.id))
            assert last.result.record_index == 2 and last.result.object_id == "bob"
            first = (await all_results(bulk, u.id))[0]
            assert first.external_fields["screenName"] == "Alice" and first.object_type == BulkUpload.USER
            await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
            done = await bulk.UpdateBulkUploadResults(bsvc.UpdateBulkUploadResultsRequest(id=u.id))
            assert done.open_count == 0 and done.bulk_upload.state == BulkUpload.SUCCEEDED
    finally:
        await app.stop(None)


async def test_an_abandoned_upload_expires_after_a_day(tmp_path: Path) -> None:
    from conftest import FakeClock

    clock = FakeClock()
    app = await start_app(str(tmp_path / "db.sqlite"), clock=clock, storage_root=tmp_path / "s")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
            u = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload()))
            data = b"name\nA\n"
            await bulk.WriteBulkUploadFile(iter([bsvc.WriteBulkUploadFileRequest(
                upload_id=u.id, data=data, crc32=zlib.crc32(data))]))
            clock.advance(23 * 3600)
            await app.sweep_once()
            kept = await bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=u.id))
            assert kept.state == BulkUpload.UPLOADING and kept.uploaded_bytes == len(data)
            clock.advance(2 * 3600)
            await app.sweep_once()
            gone = await bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=u.id))
            assert gone.state == BulkUpload.EXPIRED and gone.uploaded_bytes == 0 and "expired" in gone.error.message
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(id=u.id)):
                    pass
            assert error_info(e.value).reason == "FILE_PURGED"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await bulk.WriteBulkUploadFile(iter([bsvc.WriteBulkUploadFileRequest(
                    upload_id=u.id, write_offset=0, data=data, crc32=zlib.crc32(data))]))
            assert error_info(e.value).reason == "UPLOAD_NOT_WRITABLE"
    finally:
        await app.stop(None)


async def test_a_records_template_wins_and_replace_reprocesses(env: dict[str, Any]) -> None:
    bulk, media, root = env["bulk"], env["media"], env["root"]
    (root / "in").mkdir(parents=True)
    for name in ("a.mov", "b.mov", "c.mov"):
        (root / "in" / name).write_bytes(b"media")
    body = b"*title,url,conversionProfileId\nOwn,in/a.mov,audio-aac\nUpload's,in/b.mov,\n"
    u = await start_inline(bulk, body, template_id="mp4-h264-360p")
    await until_state(bulk, u.id, BulkUpload.WAITING_FOR_OBJECTS)
    own, default = await all_results(bulk, u.id)
    assert (await media.GetEntry(msvc.GetEntryRequest(id=own.object_id))).template_id == "audio-aac"
    assert (await media.GetEntry(msvc.GetEntryRequest(id=default.object_id))).template_id == "mp4-h264-360p"
    before = await media.GetEntry(msvc.GetEntryRequest(id=default.object_id))
    replace = f"*entryId,action,url\n{default.object_id},replace,in/c.mov\n".encode()
    r = await start_inline(bulk, replace)
    await until_state(bulk, r.id, BulkUpload.WAITING_FOR_OBJECTS)
    (res_,) = await all_results(bulk, r.id)
    assert res_.action == Result.REPLACE and res_.status == Result.IN_PROGRESS
    after = await media.GetEntry(msvc.GetEntryRequest(id=default.object_id))
    assert after.source_uri == "in/c.mov" and after.state == mres.Entry.PENDING
    assert len(after.job_ids) == len(before.job_ids) + 1  # a new EXTRACT_MEDIA job; the old one aborted
    old_job = await env["app"].store.read(store_jobs.get_job, before.job_ids[0])
    assert old_job.state == Job.ABORTED
