"""`mediajobs bulk` and the client's bulk upload methods: end to end against
a real server (the bulk runner inside it applies the records) over a real
channel, with the CLI run in a thread; a broken write stream cut by a client
interceptor on the real channel; and scripted-channel tests (grpcio-testing)
for what a real server never does on cue (a lost write, a corrupted piece)."""
from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import queue
import re
import sys
import threading
import time
import zlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import grpc
import grpc_testing
import pytest

from mediajobs.client import Backoff, MediaJobsClient, MediaJobsError
from mediajobs.client.cli import main
from mediajobs.server.app import App
from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from conftest import start_app
from scripted import fail_stream, fail_unary, ok, rich_status, run_cli, spawn, take

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
BULK_SERVICE = bsvc.DESCRIPTOR.services_by_name["BulkUploadService"]
MIB = 1024 * 1024

# One bad record (no name) between two good ones; a comment and a blank line
# that are not records.
ONE_BAD = (b"name,description,reference_id\n"
           b"First,one,ref-1\n"
           b"# a comment, not a record\n"
           b"\n"
           b",no name here,ref-2\n"
           b"Third,three,ref-3\n")
CLEAN = b"name,reference_id\nAlpha,clean-1\nBeta,clean-2\n"


class Live:
    """A real server with the bulk runner, the CLI run in a daemon thread
    against it, and async stubs on the test's loop to check what it stored."""

    def __init__(self, app: App, ch: grpc.aio.Channel, tmp: Path) -> None:
        self.target = f"127.0.0.1:{app.port}"
        self.bulk = bulk_upload_service_pb2_grpc.BulkUploadServiceStub(ch)
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.tmp = tmp

    async def cli(self, *argv: str, channel: grpc.Channel | None = None) -> int:
        # A daemon thread (not asyncio.to_thread): a CLI left waiting by a
        # failed test must not keep the event loop's executor from closing.
        async with asyncio.timeout(120):
            return await asyncio.wrap_future(spawn(main, ["--server", self.target, *argv], channel=channel))

    def file(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)

    async def get(self, upload_id: str) -> BulkUpload:
        return await self.bulk.GetBulkUpload(bsvc.GetBulkUploadRequest(id=upload_id))


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=tmp_path / "storage",
                          lease_sweep_interval_s=3600)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Live(app, ch, tmp_path)
    finally:
        await app.stop(None)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in text.splitlines()]


# -- bulk upload ---------------------------------------------------------------------


async def test_upload_with_a_bad_record_exits_1_and_its_last_json_line_has_the_counts(live: Live, capsys) -> None:
    path = live.file("catalogue.csv", ONE_BAD)
    assert await live.cli("bulk", "upload", path, "--json") == 1
    cap = capsys.readouterr()
    *progress, final = json_lines(cap.out)
    assert final["state"] == "PARTIALLY_SUCCEEDED" and final["file_name"] == "catalogue.csv"
    assert final["counts"] == {"total_records": 3, "applied": 3, "ok": 2, "error": 1, "skipped_lines": 2,
                               "objects_created": 2}, "64-bit counts are JSON numbers; zero counts left out"
    assert final["sha256"] == hashlib.sha256(ONE_BAD).hexdigest() and final["file_size_bytes"] == len(ONE_BAD)
    assert {p["upload_id"] for p in progress} == {final["id"]}
    assert progress[0] == {"upload_id": final["id"], "state": "UPLOADING", "progress": 100,
                           "uploaded_bytes": len(ONE_BAD), "total_bytes": len(ONE_BAD)}
    assert progress[-1]["state"] == "PARTIALLY_SUCCEEDED" and (progress[-1]["ok"], progress[-1]["error"]) == (2, 1)
    assert len({json.dumps(p, sort_keys=True) for p in progress}) == len(progress), "a line per change only"
    assert f"mediajobs bulk log {final['id']} --failed" in cap.err
    stored = await live.get(final["id"])
    assert stored.state == BulkUpload.PARTIALLY_SUCCEEDED and stored.counts.error == 1


async def test_clean_upload_exits_0_with_one_summary_line_and_a_bar_on_a_terminal(live: Live, capsys,
                                                                                   monkeypatch) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert await live.cli("bulk", "upload", live.file("clean.csv", CLEAN), "--template", "mp4-h264-360p",
                          "--uploaded-by", "alice") == 0
    out = capsys.readouterr().out
    m = re.fullmatch(r"bulk upload (\w{26}) \(#1\) SUCCEEDED after [\d.]+ s: 2 records: 2 ok, 0 errors\n", out)
    assert m, out
    stored = await live.get(m.group(1))
    assert (stored.template_id, stored.uploaded_by, stored.counts.objects_created) == ("mp4-h264-360p", "alice", 2)
    bars = [chunk.split("\n")[0] for chunk in tty.getvalue().split("\r")[1:]]
    assert bars[0].split()[1:3] == ["100%", "UPLOADING"], "the bytes first"
    assert bars[-1].split()[1:3] == ["100%", "SUCCEEDED"] and "2 of 2 records: 2 ok, 0 errors" in bars[-1]
    assert tty.getvalue().endswith("\n"), "the bar's line is ended"


async def test_validate_only_and_validate_first_create_nothing(live: Live, capsys) -> None:
    assert await live.cli("bulk", "upload", live.file("ok.csv", CLEAN), "--validate-only", "-q") == 0
    validated = await live.get(capsys.readouterr().out.strip())
    assert validated.state == BulkUpload.VALIDATED and validated.counts.ok == 2 and validated.validate_only
    assert await live.cli("bulk", "upload", live.file("bad.csv", ONE_BAD), "--validate-only", "-q") == 1
    assert (await live.get(capsys.readouterr().out.strip())).counts.error == 1
    assert await live.cli("bulk", "upload", live.file("bad.csv", ONE_BAD), "--validate-first", "--json") == 1
    final = json_lines(capsys.readouterr().out)[-1]
    assert final["state"] == "FAILED" and final["error_policy"] == "VALIDATE_FIRST"
    assert (final["counts"]["error"], final["counts"]["not_processed"]) == (1, 2)
    for ref in ("clean-1", "ref-1"):
        listed = await live.media.ListEntries(msvc.ListEntriesRequest(reference_id=ref))
        assert not listed.entries, f"{ref}: nothing is created"
    # A VALIDATED upload is applied with `rerun --all`.
    assert await live.cli("bulk", "rerun", validated.id, "--all", "--wait", "--json") == 0
    applied = json_lines(capsys.readouterr().out)[-1]
    assert (applied["state"], applied["generation"], applied["counts"]["objects_created"]) == ("SUCCEEDED", 2, 2)


async def test_a_file_refused_as_a_whole_exits_2_with_the_reason_and_the_columns(live: Live, capsys) -> None:
    bad_header = b"*title,colour\nx,red\n"
    assert await live.cli("bulk", "upload", live.file("colour.csv", bad_header)) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "mediajobs: INVALID_ARGUMENT: unknown columns 'colour'" in cap.err
    assert "reason: UNKNOWN_COLUMNS" in cap.err and re.search(r"field '?colour'?: not a column", cap.err)
    # Streamed (larger than 256 KiB): refused when the file is complete; the upload FAILED, nothing kept.
    big = b"*title,colour\n" + b"x,red\n" * 60_000
    assert await live.cli("bulk", "upload", live.file("big-colour.csv", big)) == 2
    assert "reason: UNKNOWN_COLUMNS" in capsys.readouterr().err
    assert await live.cli("bulk", "list", "--state", "FAILED", "--json") == 0
    (failed,) = json.loads(capsys.readouterr().out)["bulk_uploads"]
    assert failed["file_name"] == "big-colour.csv" and "uploaded_bytes" not in failed, "its bytes are not kept"
    assert "colour" in failed["error"]["message"]
    # With --ignore-unknown-columns the column is kept per record instead.
    assert await live.cli("bulk", "upload", live.file("colour.csv", bad_header), "--ignore-unknown-columns",
                          "--json") == 0
    kept = json_lines(capsys.readouterr().out)[-1]
    assert await live.cli("bulk", "results", kept["id"], "--json") == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["plugins_data"] == {"colour": "red"} and r["status"] == "OK"


async def test_usage_errors_exit_2(live: Live, capsys) -> None:
    assert await live.cli("bulk", "upload", str(live.tmp / "missing.csv")) == 2
    assert "cannot read" in capsys.readouterr().err
    assert await live.cli("bulk", "upload", live.file("c.csv", CLEAN), "--validate-only", "--validate-first") == 2
    assert "exclude each other" in capsys.readouterr().err
    assert await live.cli("bulk", "list", "--state", "DONE") == 2
    assert "unknown bulk upload state 'DONE'" in capsys.readouterr().err
    assert await live.cli("bulk", "rerun", "01HA255YE6H6DEETJ5M6595ZDA", "--failed", "--all") == 2
    assert "not allowed with" in capsys.readouterr().err
    assert await live.cli("bulk", "upload", live.file("c.csv", CLEAN), "--delimiter", ":") == 2
    assert "field bulk_upload.csv.delimiter" in capsys.readouterr().err


# -- the log and the failed records ----------------------------------------------------


async def test_log_failed_and_the_failed_records_file_upload_cleanly_once_fixed(live: Live, capsys) -> None:
    body = b"name,description\nGood,=1+1\n,first bad\nAlso good,fine\n,second bad\n"
    assert await live.cli("bulk", "upload", live.file("mixed.csv", body), "-q") == 1
    upload_id = capsys.readouterr().out.strip()

    assert await live.cli("bulk", "log", upload_id, "--failed") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:5] == ["name", "description", "line", "record", "result_status"]
    assert [(r[1], r[2], r[3], r[4]) for r in rows[1:]] == [("first bad", "3", "2", "ERROR"),
                                                            ("second bad", "5", "4", "ERROR")]
    assert await live.cli("bulk", "log", upload_id) == 0
    everything = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(everything) == 5 and everything[1][1] == "'=1+1", "formula cells are neutralised"
    log_path = live.tmp / "log.jsonl"
    assert await live.cli("bulk", "log", upload_id, "--jsonl", "--status", "OK", "-o", str(log_path)) == 0
    assert [json.loads(ln)["row_data"] for ln in log_path.read_bytes().splitlines()] == ["Good,=1+1",
                                                                                           "Also good,fine"]

    original = live.tmp / "original.csv"
    assert await live.cli("bulk", "file", upload_id, "-o", str(original)) == 0
    assert original.read_bytes() == body
    assert await live.cli("bulk", "file", upload_id) == 0
    assert capsys.readouterr().out == body.decode(), "byte-exact on stdout too"
    failed = live.tmp / "failed.csv"
    assert await live.cli("bulk", "file", upload_id, "--failed-only", "-o", str(failed)) == 0
    assert failed.read_bytes() == b"name,description\n,first bad\n,second bad\n"
    assert not (live.tmp / "failed.csv.part").exists()

    fixed = failed.read_bytes().replace(b"\n,", b"\nFixed,")
    assert await live.cli("bulk", "upload", live.file("fixed.csv", fixed), "--json") == 0
    final = json_lines(capsys.readouterr().out)[-1]
    assert (final["state"], final["counts"]["ok"]) == ("SUCCEEDED", 2)

    assert await live.cli("bulk", "results", upload_id, "--status", "ERROR") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["RECORD", "LINE", "STATUS"]
    assert [ln.split()[:3] for ln in lines[1:]] == [["2", "3", "ERROR"], ["4", "5", "ERROR"]]
    assert all("MISSING_VALUE (column name)" in ln for ln in lines[1:])
    assert await live.cli("bulk", "count", upload_id, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"created": 2, "error": 2, "ok": 2}
    assert await live.cli("bulk", "watch", upload_id) == 1, "an ended upload with errors: at once, exit 1"
    assert "PARTIALLY_SUCCEEDED" in capsys.readouterr().out


# -- list, get, abort, rerun ------------------------------------------------------------------


async def test_list_get_abort_and_rerun(tmp_path: Path, capsys) -> None:
    # No runner in this server: an upload stays QUEUED until it is aborted.
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=tmp_path / "s", bulk_runners=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            live = Live(app, ch, tmp_path)
            assert await live.cli("bulk", "upload", live.file("queued.csv", CLEAN), "--no-wait", "-q",
                                  "--description", "spring catalogue") == 0
            upload_id = capsys.readouterr().out.strip()
            assert await live.cli("bulk", "upload", live.file("other.csv", ONE_BAD), "--no-wait") == 0
            cap = capsys.readouterr()
            other = re.fullmatch(r"bulk upload (\w{26}) \(#2\) QUEUED: 3 records \(0 applied\): 0 ok, 0 errors\n",
                                 cap.out)
            assert other, cap.out
            assert f"mediajobs bulk watch {other.group(1)}" in cap.err

            assert await live.cli("bulk", "get", upload_id) == 0
            got = dict(ln.split(":", 1) for ln in capsys.readouterr().out.splitlines() if not ln.startswith(" "))
            got = {k: v.strip() for k, v in got.items()}
            assert (got["id"], got["number"], got["state"], got["file"]) == (upload_id, "1", "QUEUED", "queued.csv")
            assert got["sha256"] == hashlib.sha256(CLEAN).hexdigest()
            assert got["size"] == f"{len(CLEAN)} B ({len(CLEAN)} bytes)" and got["description"] == "spring catalogue"
            assert got["records"].startswith("2 total, 0 applied") and len(got["job_id"]) == 26

            assert await live.cli("bulk", "list") == 0
            table = capsys.readouterr().out.splitlines()
            assert table[0].split()[:4] == ["ID", "NUMBER", "STATE", "FILE"]
            assert [ln.split()[:4] for ln in table[1:]] == [[other.group(1), "2", "QUEUED", "other.csv"],
                                                           [upload_id, "1", "QUEUED", "queued.csv"]], "newest first"
            assert await live.cli("bulk", "list", "--limit", "1", "--json") == 0
            doc = json.loads(capsys.readouterr().out)
            assert [u["id"] for u in doc["bulk_uploads"]] == [other.group(1)] and doc["total_size"] == 2

            assert await live.cli("bulk", "abort", upload_id, "--reason", "wrong file", "--json") == 0
            aborted = json.loads(capsys.readouterr().out)
            assert aborted["state"] == "ABORTED" and aborted["counts"]["not_processed"] == 2
            assert "wrong file" in aborted["error"]["message"]
            assert await live.cli("bulk", "abort", upload_id) == 1
            assert "FAILED_PRECONDITION" in capsys.readouterr().err
            assert await live.cli("bulk", "watch", upload_id, "--json") == 1
            assert json_lines(capsys.readouterr().out)[-1]["state"] == "ABORTED"

            assert await live.cli("bulk", "rerun", upload_id, "--failed") == 1, "nothing failed: only not processed"
            assert "FAILED_PRECONDITION" in capsys.readouterr().err
            assert await live.cli("bulk", "rerun", upload_id, "--not-processed") == 0
            details = capsys.readouterr().out
            assert re.search(r"^state:\s+QUEUED$", details, re.M) and re.search(r"^generation:\s+2$", details, re.M)
            assert (await live.get(upload_id)).state == BulkUpload.QUEUED
            assert await live.cli("bulk", "list", "--state", "ABORTED") == 0
            assert len(capsys.readouterr().out.splitlines()) == 1, "only the header: no upload is ABORTED now"
    finally:
        await app.stop(None)


# -- a broken write stream, resumed -------------------------------------------------------


class Dropped(grpc.RpcError):
    """What a connection reset looks like to the caller of a call."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Connection reset by peer (cut by the test)"


class CutFirstWrite(grpc.StreamUnaryClientInterceptor):
    """Records every WriteBulkUploadFile message sent; cuts the first stream
    after `keep` messages: those reach the real server (which stores them),
    the rest never leave, and the caller gets UNAVAILABLE instead of the
    server's reply, as when the connection drops mid-upload."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.calls: list[list[bsvc.WriteBulkUploadFileRequest]] = []
        self.cut_reply: bsvc.WriteBulkUploadFileResponse | None = None

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, request_iterator: Any) -> Any:
        if not details.method.endswith("/WriteBulkUploadFile"):
            return continuation(details, request_iterator)
        sent: list[bsvc.WriteBulkUploadFileRequest] = []
        self.calls.append(sent)

        def recorded(it: Iterator[bsvc.WriteBulkUploadFileRequest]) -> Iterator[bsvc.WriteBulkUploadFileRequest]:
            for m in it:
                sent.append(m)
                yield m

        if len(self.calls) > 1:
            return continuation(details, recorded(request_iterator))
        outcome = continuation(details, itertools.islice(recorded(request_iterator), self.keep))
        self.cut_reply = outcome.result()  # the server has stored what got through
        raise Dropped()


def big_csv(records: int) -> bytes:
    """A CSV of a few MiB with few records (long descriptions), so the runner
    is quick."""
    return b"name,description,reference_id\r\n" + b"".join(
        f"Clip {i},{'d' * 3900} {i},big-{i}\r\n".encode() for i in range(records))


async def test_a_broken_write_resumes_from_the_stored_bytes_without_sending_them_again(live: Live, capsys) -> None:
    body = big_csv(640)  # ~2.4 MiB: three messages of at most 1 MiB
    assert 2 * MIB < len(body) < 3 * MIB
    cut = CutFirstWrite(keep=1)
    with grpc.intercept_channel(grpc.insecure_channel(live.target), cut) as channel:
        assert await live.cli("bulk", "upload", live.file("big.csv", body), "--json", channel=channel) == 0
    cap = capsys.readouterr()
    assert cut.cut_reply is not None and cut.cut_reply.committed_size == MIB
    assert cut.cut_reply.bulk_upload.state == BulkUpload.UPLOADING
    first, second = cut.calls
    assert [(m.write_offset, len(m.data), m.finish_write) for m in first] == [(0, MIB, False)]
    assert second[0].write_offset == MIB, "resumed where the server's stored bytes end"
    assert [len(m.data) for m in second] == [MIB, len(body) - 2 * MIB] and second[-1].finish_write
    assert second[-1].sha256 == hashlib.sha256(body).hexdigest()
    assert all(zlib.crc32(m.data) == m.crc32 for m in first + second)
    assert sum(len(m.data) for m in first + second) == len(body), "no stored byte is sent again"
    assert "resuming from byte 1048576" in cap.err and "UNAVAILABLE" in cap.err

    lines = json_lines(cap.out)
    final = lines[-1]
    uploading = [p["uploaded_bytes"] for p in lines[:-1] if p["state"] == "UPLOADING"]
    assert uploading[-1] == len(body) and MIB in uploading
    assert (final["state"], final["counts"]["ok"]) == ("SUCCEEDED", 640)
    stored = await live.get(final["id"])
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.file_size_bytes == len(body)
    assert stored.state == BulkUpload.SUCCEEDED
    served = live.tmp / "served.csv"
    assert await live.cli("bulk", "file", final["id"], "-o", str(served)) == 0
    assert served.read_bytes() == body, "the stored file is the original, byte-exact (read in several pieces)"


async def test_client_continues_an_upload_a_previous_process_left_unfinished(live: Live) -> None:
    body = big_csv(300)
    started = await live.bulk.StartBulkUpload(bsvc.StartBulkUploadRequest(bulk_upload=BulkUpload(
        file_name="left.csv", file_size_bytes=len(body))))
    part = body[:300_000]
    await live.bulk.WriteBulkUploadFile(iter([bsvc.WriteBulkUploadFileRequest(
        upload_id=started.id, write_offset=0, data=part, crc32=zlib.crc32(part))]))
    progress: list[tuple[int, int]] = []

    def resume() -> BulkUpload:
        with MediaJobsClient(live.target) as c:
            return c.continue_bulk_upload(started.id, body, chunk_size=256 * 1024,
                                          on_progress=lambda s, t: progress.append((s, t)))

    async with asyncio.timeout(60):
        done = await asyncio.wrap_future(spawn(resume))
    assert done.state != BulkUpload.UPLOADING and done.sha256 == hashlib.sha256(body).hexdigest()
    assert progress[0] == (300_000, len(body)) and progress[-1] == (len(body), len(body))
    # Once complete, continuing again just returns the upload.
    again = await asyncio.wrap_future(spawn(resume))
    assert again.id == started.id and again.state != BulkUpload.UPLOADING


# -- scripted server (grpcio-testing) ----------------------------------------------------------


ID = "01HA255YE6H6DEETJ5M6595ZDA"
FAST = Backoff(initial=0.001, maximum=0.002)


@pytest.fixture
def fake() -> Any:
    return grpc_testing.channel([BULK_SERVICE], grpc_testing.strict_real_time())


def take_bulk(fake: Any, name: str, running: Any, kind: str = "unary_unary") -> tuple[Any, Any]:
    return take(kind, fake, BULK_SERVICE, name, running)


def take_write(fake: Any, running: Future[Any], timeout: float = 5.0) -> Any:
    """The next WriteBulkUploadFile call's rpc (scripted.take is for calls
    with one request), failing fast if the client finished without it."""
    box: queue.Queue[Any] = queue.Queue()
    method = BULK_SERVICE.methods_by_name["WriteBulkUploadFile"]
    threading.Thread(target=lambda: box.put(fake.take_stream_unary(method)), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            _md, rpc = box.get(timeout=0.02)
            return rpc
        except queue.Empty:
            pass
        if running.done():
            raise AssertionError(f"finished without calling WriteBulkUploadFile: {running.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no WriteBulkUploadFile call within {timeout}s")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def sample_upload(**kw: Any) -> BulkUpload:
    u = BulkUpload(id=ID, number=7, state=kw.pop("state", BulkUpload.PARTIALLY_SUCCEEDED), file_name="cat.csv",
                   file_size_bytes=2048, uploaded_bytes=2048, sha256="ab" * 32, csv_version=3,
                   columns=["name", "reference_id"], job_id="01HA255YE6H6DEETJ5M6595ZJB", generation=1,
                   uploaded_by="alice", template_id="mp4-h264-720p", max_errors=10,
                   warnings=["columns category are kept as labels kaltura.category"],
                   counts=BulkUpload.Counts(total_records=10, applied=10, ok=8, error=2, objects_created=8), **kw)
    u.create_time.FromSeconds(1_800_000_000)
    u.upload_complete_time.FromSeconds(1_800_000_001)
    u.end_time.FromSeconds(1_800_000_005)
    return u


def test_get_prints_a_details_view_and_json(fake, capsys) -> None:
    run = run_cli(fake, "bulk", "get", ID)
    req, rpc = take_bulk(fake, "GetBulkUpload", run)
    assert req.id == ID
    ok(rpc, sample_upload())
    assert run.result(timeout=5) == 0
    lines = capsys.readouterr().out.splitlines()
    fields = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in lines if not ln.startswith(" ")}
    assert (fields["id"], fields["number"], fields["state"], fields["file"]) == (ID, "7", "PARTIALLY_SUCCEEDED",
                                                                              "cat.csv")
    assert fields["size"] == "2.0 KiB (2048 bytes)" and fields["sha256"] == "ab" * 32
    assert fields["records"] == "10 total, 10 applied (100%)"
    assert "  ok 8, error 2, in progress 0, not processed 0" in "\n".join(lines)
    assert fields["job_id"] == "01HA255YE6H6DEETJ5M6595ZJB" and fields["options"] == "max errors 10"
    assert "category" in fields["warnings"] and "error" not in fields
    assert len({ln.index(ln.split()[1]) for ln in lines if ln.split() and not ln.startswith(" ")}) == 1, \
        "values start in one column"

    run = run_cli(fake, "bulk", "get", ID, "--json")
    _req, rpc = take_bulk(fake, "GetBulkUpload", run)
    ok(rpc, sample_upload(state=BulkUpload.FAILED))
    assert run.result(timeout=5) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "FAILED" and doc["counts"]["total_records"] == 10 and doc["number"] == 7


def test_get_not_found_exits_1_with_the_reason(fake, capsys) -> None:
    run = run_cli(fake, "bulk", "get", ID)
    _req, rpc = take_bulk(fake, "GetBulkUpload", run)
    fail_unary(rpc, rich_status(grpc.StatusCode.NOT_FOUND, f"bulk upload {ID} not found", "BULK_UPLOAD_NOT_FOUND"))
    assert run.result(timeout=5) == 1
    err = capsys.readouterr().err
    assert f"mediajobs: NOT_FOUND: bulk upload {ID} not found" in err and "reason: BULK_UPLOAD_NOT_FOUND" in err


def test_client_resumes_from_the_offset_a_write_offset_mismatch_names(fake) -> None:
    """The server says the stream's offset is not where the file continues
    (another stream moved on): the client asks where, and goes on from there
    with the right bytes."""
    body = bytes(range(256)) * 1200  # 300 KiB: streamed
    c = MediaJobsClient(channel=fake)
    running = spawn(c.upload_bulk_file, body, file_name="x.csv", request_id="rid-1", chunk_size=100 * 1024,
                    backoff=FAST)
    req, rpc = take_bulk(fake, "StartBulkUpload", running)
    assert (req.request_id, req.content, req.bulk_upload.file_size_bytes) == ("rid-1", b"", len(body))
    assert req.bulk_upload.sha256 == hashlib.sha256(body).hexdigest()
    ok(rpc, BulkUpload(id=ID, state=BulkUpload.UPLOADING))
    # A given request_id may repeat an earlier run's: what is stored is asked first.
    req, rpc = take_bulk(fake, "QueryBulkUploadWriteStatus", running)
    ok(rpc, bsvc.QueryBulkUploadWriteStatusResponse(committed_size=0))
    write = take_write(fake, running)
    first = write.take_request()
    assert (first.upload_id, first.write_offset, first.data) == (ID, 0, body[:100 * 1024])
    fail_unary(write, rich_status(grpc.StatusCode.OUT_OF_RANGE, "write_offset 0 is not where it continues",
                                  "WRITE_OFFSET_MISMATCH", metadata={"committed_size": "204800"}))
    req, rpc = take_bulk(fake, "QueryBulkUploadWriteStatus", running)
    assert req.upload_id == ID
    ok(rpc, bsvc.QueryBulkUploadWriteStatusResponse(committed_size=204800))
    write = take_write(fake, running)
    last = write.take_request()
    assert (last.upload_id, last.write_offset, last.data) == (ID, 204800, body[204800:])
    assert last.finish_write and last.sha256 == hashlib.sha256(body).hexdigest()
    assert last.crc32 == zlib.crc32(body[204800:])
    write.requests_closed()  # the stream ends with the finishing message
    ok(write, bsvc.WriteBulkUploadFileResponse(committed_size=len(body),
                                               bulk_upload=BulkUpload(id=ID, state=BulkUpload.QUEUED)))
    assert running.result(timeout=5).state == BulkUpload.QUEUED


def test_client_gives_up_after_the_retries_and_does_not_retry_a_refusal(fake) -> None:
    body = b"name\n" + b"x\n" * 150_000  # 300 KiB: streamed
    c = MediaJobsClient(channel=fake)
    running = spawn(c.upload_bulk_file, body, chunk_size=2 * MIB, max_retries=1, backoff=FAST)
    _req, rpc = take_bulk(fake, "StartBulkUpload", running)
    ok(rpc, BulkUpload(id=ID, state=BulkUpload.UPLOADING))
    for _ in range(2):  # the first try and one retry, neither getting anything stored
        write = take_write(fake, running)
        assert write.take_request().write_offset == 0
        fail_unary(write, rich_status(grpc.StatusCode.UNAVAILABLE, "connection reset", "UNAVAILABLE"))
        _req, rpc = take_bulk(fake, "QueryBulkUploadWriteStatus", running)
        ok(rpc, bsvc.QueryBulkUploadWriteStatusResponse(committed_size=0))
    with pytest.raises(MediaJobsError) as e:
        running.result(timeout=5)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE

    running = spawn(c.upload_bulk_file, body, backoff=FAST)
    _req, rpc = take_bulk(fake, "StartBulkUpload", running)
    ok(rpc, BulkUpload(id=ID, state=BulkUpload.UPLOADING))
    write = take_write(fake, running)
    write.take_request()
    fail_unary(write, rich_status(grpc.StatusCode.INVALID_ARGUMENT, "unknown columns 'colour'", "UNKNOWN_COLUMNS",
                                  violations=[("colour", "not a column mediajobs knows")]))
    with pytest.raises(MediaJobsError) as e:
        running.result(timeout=5)
    assert (e.value.code, e.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_COLUMNS")


def test_file_refuses_a_piece_whose_crc32_does_not_match(fake, capsys, tmp_path) -> None:
    out = tmp_path / "f.csv"
    run = run_cli(fake, "bulk", "file", ID, "-o", str(out))
    req, rpc = take_bulk(fake, "ReadBulkUploadFile", run, "unary_stream")
    assert req.id == ID and req.selection == bsvc.ReadBulkUploadFileRequest.ORIGINAL
    rpc.send_response(bsvc.ReadBulkUploadFileResponse(data=b"name\n", crc32=zlib.crc32(b"name\n")))
    rpc.send_response(bsvc.ReadBulkUploadFileResponse(data=b"A\n", crc32=zlib.crc32(b"A\n") ^ 1))
    assert run.result(timeout=5) == 1
    assert "DATA_LOSS" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "f.csv.part").exists(), "no partial file is left"
    fail_stream(rpc, rich_status(grpc.StatusCode.CANCELLED, "cancelled", "CANCELLED"))


def test_help_describes_every_action(capsys) -> None:
    assert main(["bulk", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("upload", "get", "list", "watch", "abort", "rerun", "log", "file", "results", "count"):
        assert re.search(rf"^\s+{action}\s", out, re.M), action
    assert main(["bulk", "upload", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit status" in out and "--no-wait" in out and "resumes by itself" in out and "Examples:" in out


async def test_the_same_request_id_returns_the_same_upload_without_writing_again(live: Live, capsys) -> None:
    body = big_csv(80)  # ~310 KiB: streamed
    path = live.file("again.csv", body)
    assert await live.cli("bulk", "upload", path, "--request-id", "catalogue-2024-05", "-q") == 0
    first = capsys.readouterr().out.strip()
    cut = CutFirstWrite(keep=0)  # records the writes (there should be none)
    with grpc.intercept_channel(grpc.insecure_channel(live.target), cut) as channel:
        assert await live.cli("bulk", "upload", path, "--request-id", "catalogue-2024-05", "-q",
                              channel=channel) == 0
    assert capsys.readouterr().out.strip() == first
    assert cut.calls == [], "the file was complete: nothing is written again"
    assert (await live.bulk.ListBulkUploads(bsvc.ListBulkUploadsRequest())).total_size == 1


async def test_an_empty_file_succeeds_with_no_records(live: Live, capsys) -> None:
    assert await live.cli("bulk", "upload", live.file("empty.csv", b""), "--json") == 0
    final = json_lines(capsys.readouterr().out)[-1]
    assert final["state"] == "SUCCEEDED" and final["sha256"] == hashlib.sha256(b"").hexdigest()
    assert final["counts"] == {}, "no record: every count is 0"
