"""BulkUploadService at scale and under hostile input, over a real channel,
on SQLite and PostgreSQL: 100,000 records with 1 % bad ones (one result per
record, counts that add up, the failed-records file fixed and uploaded
again), hostile files (NUL bytes, stray and unbalanced quotes, a 100 MiB
line, 10,000 columns or values) giving per-record errors or a file-level
refusal with server memory that does not grow with the file, abort in the
middle of processing and while the entries are still processing,
max_errors, watch progress, and ListBulkUploads filters and pages.

Memory: the in-process server runs in the test process, so its memory is
this process's RSS. The peak is reset (/proc/self/clear_refs) before a
measured step and read back (VmHWM) after it; the test's own data is
generated a 1 MiB message at a time and never held. The bound is asserted on
PostgreSQL, whose page cache lives in the database's own processes: on
SQLite the server's connections hold page caches of up to 64 MB each
(db.SQLITE_PRAGMAS cache_size) inside this process, which a large file fills
whether or not the server buffers it."""
from __future__ import annotations

import asyncio
import gc
import hashlib
import re
import zlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2

from mediajobs.client import MediaJobsClient
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc

from conftest import error_info, fresh_pg_url, start_app

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
Job = res.Job
FileSel = bsvc.ReadBulkUploadFileRequest

MiB = 1024 * 1024
TERMINAL = {BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED, BulkUpload.ABORTED,
            BulkUpload.EXPIRED, BulkUpload.VALIDATED}
RSS_GROWTH_LIMIT = 64 * MiB


async def _env(db: str, root: Path) -> AsyncIterator[dict[str, Any]]:
    app = await start_app(db, storage_root=root)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield {"app": app, "root": root, "pg": "://" in db,
                   "bulk": bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch),
                   "jobs": job_service_pb2_grpc.JobServiceStub(ch),
                   "workers": worker_service_pb2_grpc.WorkerServiceStub(ch)}
    finally:
        await app.stop(None)


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async for e in _env(db_url, tmp_path / "storage"):
        yield e


@pytest.fixture
async def pg_env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """PostgreSQL only: for memory bounds (no database page cache in this process)."""
    async for e in _env(fresh_pg_url(), tmp_path / "storage"):
        yield e


# -- helpers ---------------------------------------------------------------------------------


def one_mib_parts(body: bytes) -> Iterator[bytes]:
    for off in range(0, len(body), MiB):
        yield body[off:off + MiB]


def write_messages(upload_id: str, parts: Iterable[bytes], sha256: str = "") -> Iterator[bsvc.WriteBulkUploadFileRequest]:
    """A whole-file write stream, made lazily one message at a time."""
    yield bsvc.WriteBulkUploadFileRequest(upload_id=upload_id, write_offset=0)
    for part in parts:
        yield bsvc.WriteBulkUploadFileRequest(data=part, crc32=zlib.crc32(part))
    yield bsvc.WriteBulkUploadFileRequest(finish_write=True, sha256=sha256)


async def stream_upload(bulk: Any, parts: Iterable[bytes], sha256: str = "", **spec: Any
                        ) -> bsvc.WriteBulkUploadFileResponse:
    u = await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(file_name="big.csv", **spec)))
    assert u.state == BulkUpload.UPLOADING
    return await bulk.WriteBulkUploadFile(write_messages(u.id, parts, sha256))


async def start_inline(bulk: Any, content: bytes, **spec: Any) -> BulkUpload:
    return await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(
        bulk_upload=BulkUpload(file_name="catalogue.csv", **spec), content=content))


async def follow(bulk: Any, upload_id: str) -> list[BulkUpload]:
    """Every WatchBulkUpload message until the stream ends (after a terminal state)."""
    seen = [u async for u in bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=upload_id), timeout=120)]
    assert seen, "the watch sent nothing"
    assert seen[-1].state in TERMINAL, f"the watch ended in {BulkUpload.State.Name(seen[-1].state)}"
    return seen


async def finished(bulk: Any, upload_id: str) -> BulkUpload:
    return (await follow(bulk, upload_id))[-1]


async def watch_until(bulk: Any, upload_id: str, pred: Callable[[BulkUpload], bool]) -> BulkUpload:
    call = bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=upload_id), timeout=120)
    last = None
    try:
        async for u in call:
            last = u
            if pred(u):
                return u
    finally:
        call.cancel()
    raise AssertionError(f"the watch ended without the awaited state; last: {last}")


async def all_results(bulk: Any, upload_id: str, statuses: Iterable[int] = (), page_size: int = 1000,
                      view: int = 0) -> list[Result]:
    out: list[Result] = []
    token = ""
    while True:
        page = await bulk.ListBulkUploadResults(bsvc.ListBulkUploadResultsRequest(
            id=upload_id, statuses=list(statuses), page_size=page_size, page_token=token, view=view))
        out += page.results
        token = page.next_page_token
        if not token:
            return out


async def read_file(bulk: Any, upload_id: str, selection: int = FileSel.ORIGINAL) -> bytes:
    out = []
    async for m in bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(id=upload_id, selection=selection)):
        assert zlib.crc32(m.data) == m.crc32
        out.append(m.data)
    return b"".join(out)


def reason(r: Result) -> str:
    for d in r.error.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info.reason
    return ""


def assert_counts_add_up(c: BulkUpload.Counts) -> None:
    assert c.ok + c.error + c.in_progress + c.not_processed == c.total_records, c


def state_of(c: BulkUpload.Counts) -> int:
    """The terminal state the counts of an ended (not aborted) upload call for."""
    if c.ok == c.total_records:
        return BulkUpload.SUCCEEDED
    return BulkUpload.FAILED if c.ok == 0 else BulkUpload.PARTIALLY_SUCCEEDED


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakRss:
    """The growth of this process's peak RSS over a step: `with PeakRss() as
    m: ...; m.growth`."""

    def __enter__(self) -> "PeakRss":
        gc.collect()
        self.growth = 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.measured = True
        except OSError:
            self.measured = False  # not Linux, or not allowed: nothing to assert
        self.base = _proc_status("VmRSS") if self.measured else 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.measured:
            self.growth = _proc_status("VmHWM") - self.base


# -- 1. 100,000 records, 1 % bad, fixed and uploaded again ----------------------------------------------------------------

N_LARGE = 100_000
HEADER = b"name,reference_id,action\n"
BAD_REASONS = {0: "MISSING_VALUE", 1: "INVALID_ACTION", 2: "UNBALANCED_QUOTE"}


def catalogue(n: int) -> tuple[bytes, list[bytes]]:
    """A file of n records; every 100th is bad: no name, a bogus action or
    an unbalanced quote, in turn."""
    lines: list[bytes] = [HEADER]
    bad: list[bytes] = []
    for i in range(1, n + 1):
        if i % 100:
            lines.append(b"Item %d,ref-%d,add\n" % (i, i))
            continue
        kind = (i // 100) % 3
        line = (b",ref-%d,add\n" % i if kind == 0 else
                b"Item %d,ref-%d,bogus\n" % (i, i) if kind == 1 else
                b'Item "%d,ref-%d,add\n' % (i, i))
        lines.append(line)
        bad.append(line)
    return b"".join(lines), bad


def fix(line: bytes) -> bytes:
    if line.startswith(b","):
        return b"Fixed" + line
    return line.replace(b'"', b"").replace(b",bogus\n", b",add\n")


# 100,000 records take about 7 s on SQLite but 20 s on PostgreSQL (8,000 records
# a second): PostgreSQL runs the same test on 10,000 records.
@pytest.mark.parametrize("db_url, n", [("sqlite", N_LARGE), ("postgres", N_LARGE // 10)], indirect=["db_url"])
async def test_100k_records_one_percent_bad_then_the_fixed_records_succeed(env: dict[str, Any], n: int) -> None:
    bulk = env["bulk"]
    body, bad = catalogue(n)
    sha = hashlib.sha256(body).hexdigest()
    written = await stream_upload(bulk, one_mib_parts(body), sha, file_size_bytes=len(body))
    u = written.bulk_upload
    assert written.committed_size == len(body) and u.counts.total_records == n and u.sha256 == sha

    seen = await follow(bulk, u.id)
    done = seen[-1]
    c = done.counts
    assert done.state == BulkUpload.PARTIALLY_SUCCEEDED
    assert (c.total_records, c.applied, c.ok, c.error, c.in_progress, c.not_processed, c.objects_created) == (
        n, n, n - n // 100, n // 100, 0, 0, n - n // 100)
    assert_counts_add_up(c)
    # WatchBulkUpload showed progress on the way, never going back.
    applied = [s.counts.applied for s in seen]
    assert applied == sorted(applied)
    assert any(s.state == BulkUpload.PROCESSING and 0 < s.counts.applied < n for s in seen), applied

    # Exactly one result per record, in record order, each on its line.
    results = await all_results(bulk, u.id)
    assert [r.record_index for r in results] == list(range(1, n + 1))
    assert all(r.line_number == r.record_index + 1 for r in results)
    errors = {r.record_index: reason(r) for r in results if r.status == Result.ERROR}
    assert errors == {i: BAD_REASONS[(i // 100) % 3] for i in range(100, n + 1, 100)}
    assert sum(r.status == Result.OK for r in results) == n - n // 100
    counted = await bulk.CountBulkUploadResults(bsvc.CountBulkUploadResultsRequest(id=u.id))
    assert (counted.ok, counted.error, counted.in_progress, counted.not_processed) == (n - n // 100, n // 100, 0, 0)

    # The failed-records file: the header and the bad records, byte-exact.
    failed = await read_file(bulk, u.id, FileSel.FAILED_RECORDS)
    assert failed == HEADER + b"".join(bad)

    # Fixed and uploaded again (by the client, on a sync channel, in a thread).
    fixed = HEADER + b"".join(fix(line) for line in failed.splitlines(keepends=True)[1:])

    def upload_fixed() -> BulkUpload:
        with MediaJobsClient(f"127.0.0.1:{env['app'].port}") as client:
            return client.upload_bulk_file(fixed, file_name="fixed.csv")

    again = await asyncio.to_thread(upload_fixed)
    assert again.id != u.id and again.counts.total_records == n // 100
    end = await finished(bulk, again.id)
    assert end.state == BulkUpload.SUCCEEDED
    assert (end.counts.ok, end.counts.error, end.counts.objects_created) == (n // 100, 0, n // 100)


# -- 2. hostile files -------------------------------------------------------------------------


async def test_nul_bytes_quotes_and_10000_values_fail_only_their_records(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    lines = [b"name,reference_id,description\n"]
    expected: list[tuple[int, int, str]] = []  # (record index, line number, ERROR reason or "OK")
    line_no = 2
    ten_thousand_values = b",".join(b"v" for _ in range(9_998))  # + name + reference: 10,000 values, 20 KB
    long_values = b",".join(b"value-%05d" % k for k in range(9_998))  # 10,000 values, 110 KB
    for i in range(1, 1001):
        k = i % 50
        if k == 1:
            line, why = b"Item\x00 %d,r%d,x\n" % (i, i), "NUL_BYTE"
        elif k == 11:
            line, why = b'"Item %d\x00",r%d,x\n' % (i, i), "NUL_BYTE"
        elif k == 21:
            line, why = b'Item "%d,r%d,x\n' % (i, i), "UNBALANCED_QUOTE"
        elif k == 31 and i < 100:
            line, why = b"Item %d,r%d," % (i, i) + ten_thousand_values + b"\n", "TOO_MANY_VALUES"
        elif k == 31 and i < 200:
            line, why = b"Item %d,r%d," % (i, i) + long_values + b"\n", "RECORD_TOO_LARGE"
        elif k == 41:
            line, why = b'"Item %d",r%d,"two\nlines"\n' % (i, i), "OK"  # a quoted line break: one record
        elif k == 42:
            line, why = b"\x00\x00\x00\n", "NUL_BYTE"
        else:
            line, why = b"Item %d,r%d,x\n" % (i, i), "OK"
        lines.append(line)
        expected.append((i, line_no, why))
        line_no += line.count(b"\n")
    body = b"".join(lines)
    written = await stream_upload(bulk, one_mib_parts(body))
    u = written.bulk_upload
    assert u.counts.total_records == 1000
    done = await finished(bulk, u.id)
    n_bad = sum(why != "OK" for *_, why in expected)
    assert (done.counts.applied, done.counts.error, done.counts.ok) == (1000, n_bad, 1000 - n_bad)
    assert done.counts.objects_created == 1000 - n_bad
    assert_counts_add_up(done.counts)
    assert done.state == BulkUpload.PARTIALLY_SUCCEEDED
    got = [(r.record_index, r.line_number, reason(r) if r.status == Result.ERROR else Result.Status.Name(r.status))
           for r in await all_results(bulk, u.id)]
    assert got == expected


async def test_20000_stray_quotes_are_20000_errors_and_every_other_line_validates(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    n = 40_000
    body = b"name,reference_id\n" + b"".join(
        (b'Item "%d,r%d\n' if i % 2 == 0 else b"Item %d,r%d\n") % (i, i) for i in range(1, n + 1))
    assert body.count(b'"') == 20_000
    u = (await stream_upload(bulk, one_mib_parts(body), validate_only=True)).bulk_upload
    assert u.counts.total_records == n
    done = await finished(bulk, u.id)
    assert done.state == BulkUpload.VALIDATED
    assert (done.counts.applied, done.counts.ok, done.counts.error, done.counts.objects_created) == (n, n // 2, n // 2, 0)
    errors = await all_results(bulk, u.id, statuses=[Result.ERROR])
    assert [r.record_index for r in errors] == list(range(2, n + 1, 2))
    assert {reason(r) for r in errors} == {"UNBALANCED_QUOTE"}
    assert all(r.line_number == r.record_index + 1 for r in errors)


async def test_a_header_of_10000_columns_is_refused_naming_the_limit(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    short_names = b"*title," + b",".join(b"c%d" % i for i in range(9_999)) + b"\nA,b\n"  # a 59 KB header
    long_names = b",".join(b"label:custom_field_%05d" % i for i in range(10_000)) + b"\nA\n"  # 240 KB
    assert short_names.index(b"\n") < 64 * 1024 < long_names.index(b"\n")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await start_inline(bulk, short_names)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value).reason == "TOO_MANY_COLUMNS"
    assert "10000 columns; at most 64" in (e.value.details() or "")
    # Streamed: refused at the end, the upload FAILED and its bytes gone.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stream_upload(bulk, one_mib_parts(short_names))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value).reason == "TOO_MANY_COLUMNS"
    (refused,) = (await bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(states=[BulkUpload.FAILED]))).bulk_uploads
    assert refused.uploaded_bytes == 0 and "at most 64" in refused.error.message
    # 10,000 real column names make a header longer than a record may be:
    # refused too, naming the limit it broke (64 columns, or 64 KiB a record).
    for spec in ({}, {"csv": BulkUpload.CsvOptions(header=BulkUpload.CsvOptions.PRESENT)}):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await start_inline(bulk, long_names, **spec)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        message = e.value.details() or ""
        assert re.search(r"at most (64|65536)\b", message), message


BIG_HEAD = b"name,description\nGood one,x\nBig,"
BIG_TAIL = b"\nGood two,y\n"


def big_line_parts(size: int) -> Iterator[bytes]:
    """A file whose second record is one line of `size` bytes, made lazily:
    the 1 MiB block is one object, sent again and again."""
    yield BIG_HEAD
    block = b"z" * MiB
    for _ in range(size // MiB):
        yield block
    yield BIG_TAIL


async def test_a_100_mib_line_is_one_error_and_is_never_buffered(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    size = 100 * MiB
    with PeakRss() as mem:
        written = await stream_upload(bulk, big_line_parts(size))
        u = written.bulk_upload
        done = await finished(bulk, u.id)
    assert written.committed_size == len(BIG_HEAD) + size + len(BIG_TAIL)
    assert u.counts.total_records == 3
    assert done.state == BulkUpload.PARTIALLY_SUCCEEDED
    assert (done.counts.ok, done.counts.error, done.counts.objects_created) == (2, 1, 2)
    results = await all_results(bulk, u.id)
    assert [(r.record_index, r.line_number, Result.Status.Name(r.status), reason(r)) for r in results] == [
        (1, 2, "OK", ""), (2, 3, "ERROR", "RECORD_TOO_LARGE"), (3, 4, "OK", "")]
    assert results[1].byte_length == len(b"Big,") + size + 1
    if env["pg"] and mem.measured:
        assert mem.growth < RSS_GROWTH_LIMIT, f"RSS grew by {mem.growth / MiB:.0f} MiB for a 100 MiB line"


async def test_serving_a_100_mib_record_never_buffers_it(pg_env: dict[str, Any]) -> None:
    """The failed-records file, the log and the FULL results of an upload
    with a 100 MiB record stream it in bounded memory (and are readable)."""
    bulk = pg_env["bulk"]
    size = 100 * MiB
    u = (await stream_upload(bulk, big_line_parts(size), validate_only=True)).bulk_upload
    assert (await finished(bulk, u.id)).counts.error == 1
    expected = hashlib.sha256()
    expected.update(b"name,description\n")
    for part in big_line_parts(size):
        if part is BIG_HEAD:
            expected.update(b"Big,")
        elif part is BIG_TAIL:
            expected.update(b"\n")
        else:
            expected.update(part)
    problems: list[str] = []

    with PeakRss() as mem:
        got, n = hashlib.sha256(), 0
        async for m in bulk.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(id=u.id, selection=FileSel.FAILED_RECORDS)):
            got.update(m.data)
            n += len(m.data)
    if got.hexdigest() != expected.hexdigest():
        problems.append(f"the failed-records file is not the header and the record ({n} bytes)")
    if mem.growth >= RSS_GROWTH_LIMIT:
        problems.append(f"ReadBulkUploadFile FAILED_RECORDS: RSS grew by {mem.growth / MiB:.0f} MiB")

    with PeakRss() as mem:
        rows = 0
        async for m in bulk.ReadBulkUploadLog(bsvc.ReadBulkUploadLogRequest(id=u.id)):
            rows += m.data.count(b"\r\n")
    if rows != 4:
        problems.append(f"the CSV log has {rows} rows, not a header and 3 records")
    if mem.growth >= RSS_GROWTH_LIMIT:
        problems.append(f"ReadBulkUploadLog: RSS grew by {mem.growth / MiB:.0f} MiB")

    with PeakRss() as mem:
        try:
            full = await all_results(bulk, u.id, view=bsvc.ListBulkUploadResultsRequest.FULL)
            if [r.record_index for r in full] != [1, 2, 3]:
                problems.append(f"ListBulkUploadResults FULL listed records {[r.record_index for r in full]}")
        except grpc.aio.AioRpcError as e:
            problems.append(f"ListBulkUploadResults FULL: {e.code().name}: {e.details()}")
    if mem.growth >= RSS_GROWTH_LIMIT:
        problems.append(f"ListBulkUploadResults FULL: RSS grew by {mem.growth / MiB:.0f} MiB")
    assert not problems, "\n".join(problems)


async def test_full_results_page_past_a_record_larger_than_a_message(env: dict[str, Any]) -> None:
    """A record too large to be valid (5 MiB, more than a client accepts in
    one message by default) does not make its results page unreadable."""
    bulk = env["bulk"]
    u = (await stream_upload(bulk, big_line_parts(5 * MiB), validate_only=True)).bulk_upload
    assert (await finished(bulk, u.id)).counts.error == 1
    full = await all_results(bulk, u.id, view=bsvc.ListBulkUploadResultsRequest.FULL, page_size=10)
    assert [(r.record_index, r.status) for r in full] == [(1, Result.OK), (2, Result.ERROR), (3, Result.OK)]
    assert full[0].row_data == "Good one,x" and full[2].row_data == "Good two,y"


# -- 3. abort ----------------------------------------------------------------------------------


async def test_abort_in_the_middle_of_processing(env: dict[str, Any]) -> None:
    bulk, jobs = env["bulk"], env["jobs"]
    n = 30_000
    body = b"name,reference_id\n" + b"".join(
        (b",r%d\n" % i) if i % 1000 == 0 else (b"Item %d,r%d\n" % (i, i)) for i in range(1, n + 1))
    u = (await stream_upload(bulk, one_mib_parts(body))).bulk_upload
    assert u.counts.total_records == n
    running = await watch_until(bulk, u.id, lambda s: s.state == BulkUpload.PROCESSING and s.counts.applied > 0)
    aborted = await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=u.id, reason="wrong file"))
    assert aborted.state in (BulkUpload.ABORTING, BulkUpload.ABORTED)
    end = await finished(bulk, u.id)
    assert end.state == BulkUpload.ABORTED and "wrong file" in end.error.message
    c = end.counts
    assert running.counts.applied <= c.applied < n, "aborted while processing"
    assert_counts_add_up(c)
    assert c.not_processed == n - c.applied and c.in_progress == 0
    assert c.error == c.applied // 1000 and c.ok == c.applied - c.error == c.objects_created
    # Every record applied has its result; the rest are NOT_PROCESSED.
    not_processed = await all_results(bulk, u.id, statuses=[Result.NOT_PROCESSED])
    assert len(not_processed) == n - c.applied
    assert [r.record_index for r in not_processed] == list(range(c.applied + 1, n + 1))
    assert all(r.line_number == r.record_index + 1 for r in not_processed)
    applied = await all_results(bulk, u.id, statuses=[Result.OK, Result.ERROR])
    assert [r.record_index for r in applied] == list(range(1, c.applied + 1))
    job = await jobs.GetJob(svc.GetJobRequest(id=end.job_id))
    assert job.state == Job.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=u.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(e.value).reason == "BULK_UPLOAD_FINISHED"


@pytest.mark.parametrize("keep_child_jobs", [False, True])
async def test_abort_while_the_entries_are_processing(env: dict[str, Any], keep_child_jobs: bool) -> None:
    bulk, jobs, workers, root = env["bulk"], env["jobs"], env["workers"], env["root"]
    (root / "in").mkdir(parents=True)
    for i in range(4):
        (root / "in" / f"c{i}.mov").write_bytes(b"not really a movie")
    body = b"name,source_uri\n" + b"".join(b"Clip %d,in/c%d.mov\n" % (i, i) for i in range(4))
    u = await start_inline(bulk, body)
    waiting = await watch_until(bulk, u.id, lambda s: s.state in TERMINAL | {BulkUpload.WAITING_FOR_OBJECTS})
    assert waiting.state == BulkUpload.WAITING_FOR_OBJECTS and waiting.counts.in_progress == 4
    results = await all_results(bulk, u.id)
    assert [len(r.job_ids) for r in results] == [1, 1, 1, 1]
    child_ids = [r.job_ids[0] for r in results]
    # One of the jobs is running at a worker.
    got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["EXTRACT_MEDIA"], identity="t", max_jobs=1))
    (leased,) = got.jobs
    assert leased.job.id in child_ids

    aborted = await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=u.id, keep_child_jobs=keep_child_jobs))
    assert aborted.state == BulkUpload.ABORTED
    assert_counts_add_up(aborted.counts)
    states = {j: (await jobs.GetJob(svc.GetJobRequest(id=j))).state for j in child_ids}
    if keep_child_jobs:
        assert states == {j: Job.RUNNING if j == leased.job.id else Job.PENDING for j in child_ids}
        assert [r.status for r in await all_results(bulk, u.id)] == [Result.IN_PROGRESS] * 4
        assert (aborted.counts.in_progress, aborted.counts.error) == (4, 0)
        beat = await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=leased.job.id, lease_token=leased.lease_token))
        assert not beat.cancel_requested
        return
    assert states == {j: Job.ABORTING if j == leased.job.id else Job.ABORTED for j in child_ids}
    assert (aborted.counts.error, aborted.counts.in_progress) == (3, 1)
    # The worker sees the abort and acknowledges it: the last result follows.
    beat = await workers.Heartbeat(wsvc.HeartbeatRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    assert beat.cancel_requested
    done = await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=leased.job.id, lease_token=leased.lease_token))
    assert done.state == Job.ABORTED
    end = await bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=u.id))
    assert end.state == BulkUpload.ABORTED
    assert (end.counts.error, end.counts.in_progress, end.counts.ok) == (4, 0, 0)
    assert_counts_add_up(end.counts)
    after = await all_results(bulk, u.id)
    assert [(r.status, r.object_state) for r in after] == [(Result.ERROR, "ERROR")] * 4
    assert all("abort" in r.object_error for r in after), [r.object_error for r in after]


# -- 4. max_errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, stop", [
    ((40, 80, 160, 300, 400, 500, 600, 700, 800, 900), 160),  # the 3rd error ends a batch
    ((100, 200, 250, 400, 500, 600, 700, 800, 900, 1000), 250),  # ... or is in the middle of one
    ((1, 2, 3, 100, 200, 300, 400, 500, 600, 700), 3),  # no record succeeds: FAILED
])
async def test_max_errors_stops_after_the_third_error(env: dict[str, Any], bad: tuple[int, ...], stop: int) -> None:
    bulk = env["bulk"]
    n = 1000
    body = b"name,reference_id\n" + b"".join(
        (b",r%d\n" % i) if i in bad else (b"Item %d,r%d\n" % (i, i)) for i in range(1, n + 1))
    u = await start_inline(bulk, body, max_errors=3)
    end = await finished(bulk, u.id)
    c = end.counts
    assert_counts_add_up(c)
    assert (c.applied, c.error, c.ok, c.not_processed, c.objects_created) == (stop, 3, stop - 3, n - stop, stop - 3)
    assert end.state == state_of(c)
    assert end.state == (BulkUpload.FAILED if stop == 3 else BulkUpload.PARTIALLY_SUCCEEDED)
    errors = await all_results(bulk, u.id, statuses=[Result.ERROR])
    assert [r.record_index for r in errors] == list(bad[:3])
    rest = await all_results(bulk, u.id, statuses=[Result.NOT_PROCESSED])
    assert [r.record_index for r in rest] == list(range(stop + 1, n + 1))
    counted = await bulk.CountBulkUploadResults(bsvc.CountBulkUploadResultsRequest(id=u.id))
    assert (counted.ok, counted.error, counted.not_processed) == (stop - 3, 3, n - stop)


# -- 5. watch and list ----------------------------------------------------------------------------


async def test_watch_of_an_unknown_upload_is_not_found(env: dict[str, Any]) -> None:
    bulk = env["bulk"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in bulk.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id="01HA255YE6H6DEETJ5M6595ZDA"), timeout=10):
            pass
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and error_info(e.value).reason == "BULK_UPLOAD_NOT_FOUND"


async def test_list_bulk_uploads_filters_and_pages(env: dict[str, Any]) -> None:
    bulk = env["bulk"]

    async def started(by: str, **spec: Any) -> BulkUpload:
        return await bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(uploaded_by=by, **spec)))

    a1 = await start_inline(bulk, b"name\nA\n", uploaded_by="alice")
    b1 = await started("bob")
    a2 = await start_inline(bulk, b"name\nA\n\n,no name\n", uploaded_by="alice")
    b2 = await started("bob")
    await bulk.AbortBulkUpload(bsvc.AbortBulkUploadRequest(id=b2.id))
    a3 = await started("alice")
    c1 = await start_inline(bulk, b"name\nC\n", uploaded_by="carol", validate_only=True)
    states = {u.id: (await finished(bulk, u.id)).state for u in (a1, a2, c1)}
    assert states == {a1.id: BulkUpload.SUCCEEDED, a2.id: BulkUpload.PARTIALLY_SUCCEEDED, c1.id: BulkUpload.VALIDATED}

    async def pages(**kw: Any) -> list[list[str]]:
        out: list[list[str]] = []
        token = ""
        total = set()
        while True:
            page = await bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(page_token=token, **kw))
            out.append([x.id for x in page.bulk_uploads])
            total.add(page.total_size)
            token = page.next_page_token
            if not token:
                assert total == {sum(map(len, out))}, f"total_size {total} on some page"
                return out

    everything = await pages(page_size=2)
    assert [len(p) for p in everything] == [2, 2, 2]
    ids = [i for p in everything for i in p]
    assert ids == sorted({a1.id, a2.id, a3.id, b1.id, b2.id, c1.id}, reverse=True)  # newest first, no repeats
    alice = sorted([a1.id, a2.id, a3.id], reverse=True)
    assert await pages(page_size=2, uploaded_by="alice") == [alice[:2], alice[2:]]
    assert await pages(states=[BulkUpload.UPLOADING]) == [sorted([a3.id, b1.id], reverse=True)]
    assert await pages(states=[BulkUpload.UPLOADING, BulkUpload.ABORTED], uploaded_by="bob") == [
        sorted([b1.id, b2.id], reverse=True)]
    ended = await pages(page_size=1, states=[BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED,
                                             BulkUpload.VALIDATED])
    assert ended == [[i] for i in sorted([a1.id, a2.id, c1.id], reverse=True)]
    assert await pages(uploaded_by="dave") == [[]]
    # A token is only good for the filters it was issued with.
    first = await bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(page_size=1, uploaded_by="alice"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest(page_size=1, uploaded_by="bob",
                                                               page_token=first.next_page_token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
