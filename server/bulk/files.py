"""Reading a stored upload file: the finish-time check, and the original
bytes of records (for the failed-records file, the log and row_data).

Everything here streams over the file's chunks (store/bulk_uploads.iter_file)
and runs in a thread, never on the event loop."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import queue
import threading
from typing import Iterable, Iterator

import grpc

from mediajobs.v1 import bulk_resources_pb2 as bres

from ..errors import ServiceError, invalid_argument
from ..store.bulk_uploads import MAX_RECORDS, FileSummary
from . import csv_records

BulkUpload = bres.BulkUpload


def csv_options(upload: BulkUpload) -> csv_records.CsvOptions:
    header = {BulkUpload.CsvOptions.PRESENT: "present", BulkUpload.CsvOptions.ABSENT: "absent"}.get(
        upload.csv.header, "auto")
    return csv_records.CsvOptions(
        delimiter=upload.csv.delimiter or ",", encoding=upload.csv.encoding or "utf-8", header=header,
        ignore_unknown_columns=upload.ignore_unknown_columns,
    )


def file_refused(e: csv_records.FileError) -> ServiceError:
    """A file refused as a whole: INVALID_ARGUMENT with the file's reason."""
    err = invalid_argument(e.violations or [("file", e.message)], reason=e.reason)
    err.message = e.message
    return err


class _Tee:
    """Counts bytes and lines and hashes the chunks on their way to the parser."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.sha = hashlib.sha256()
        self.size = 0
        self.newlines = 0
        self.last = b""

    def __iter__(self) -> Iterator[bytes]:
        for c in self._chunks:
            self.sha.update(c)
            self.size += len(c)
            self.newlines += c.count(b"\n")
            if c:
                self.last = c[-1:]
            yield c

    def drain(self) -> None:
        for _ in self:
            pass


def summarize(chunks_at_0: Iterable[bytes], chunks_again: Iterable[bytes], upload: BulkUpload) -> FileSummary:
    """One pass over a complete file: sha256, header, every record counted;
    raises ServiceError (INVALID_ARGUMENT) for a file refused as a whole.
    `chunks_again` is a second stream of the file from byte 0 (the header is
    read from the first)."""
    options = csv_options(upload)
    try:
        layout = csv_records.read_layout(chunks_at_0, options)
    except csv_records.FileError as e:
        raise file_refused(e) from None
    tee = _Tee(chunks_again)
    records = 0
    record_lines = 0
    try:
        for rec in csv_records.scan_records(tee, options, layout, check_fields=False):
            records += 1
            record_lines += rec.line_count
            if records > MAX_RECORDS:
                raise invalid_argument([("file", f"more than {MAX_RECORDS} records; split the file")],
                                       reason="TOO_MANY_RECORDS")
    except csv_records.FileError as e:
        raise file_refused(e) from None
    tee.drain()
    lines = tee.newlines + (1 if tee.last not in (b"", b"\n") else 0)
    has_header = layout.version in (0, 3)
    return FileSummary(
        size=tee.size, sha256=tee.sha.hexdigest(), csv_version=layout.version, columns=list(layout.columns),
        warnings=list(layout.warnings), total_records=records,
        skipped_lines=max(lines - record_lines - (1 if has_header else 0), 0),
        data_offset=layout.data_start.byte_offset, data_line=layout.data_start.line_number,
    )


class RunningSummary:
    """The finish-time check of a file (summarize), run while the file
    arrives: a thread consumes the bytes a stream writes from byte 0, so
    that finishing costs little more than the last message. A stream that
    starts elsewhere (a resumed upload) does not use it: the check then
    reads the stored file at the end."""

    PREFIX_BYTES = 1024 * 1024  # the header is read from at least this much
    QUEUE_CHUNKS = 8  # messages waiting for the thread (bounded memory)

    def __init__(self, upload: BulkUpload) -> None:
        self.upload = upload
        self._q: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()
        self._task: asyncio.Future[FileSummary | None] = loop.create_future()
        self._closed = False

        def run() -> None:
            try:
                out = self._run()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting stream
                loop.call_soon_threadsafe(_settle, self._task, None, e)
            else:
                loop.call_soon_threadsafe(_settle, self._task, out, None)

        # Its own thread, not a pool's: a pool thread waiting for a stream's
        # next bytes could hold up the very call that would deliver them.
        threading.Thread(target=run, name="mediajobs-bulk-check", daemon=True).start()

    async def feed(self, data: bytes) -> None:
        try:
            self._q.put_nowait(data)
        except queue.Full:
            await asyncio.to_thread(self._q.put, data)

    async def result(self) -> FileSummary | None:
        """The summary (None when the header did not fit the prefix: then
        check the stored file); raises ServiceError for a refused file."""
        await self.feed(b"")  # flush: nothing more comes
        self._close()
        return await self._task

    def abandon(self) -> None:
        """The stream ended without finishing: let the thread go."""
        self._close()
        self._task.add_done_callback(lambda t: t.exception())

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._q.put_nowait(None)
                return
            except queue.Full:  # the thread is busy: make room, it will stop at the marker
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass

    def _chunks(self) -> Iterator[bytes]:
        while (c := self._q.get()) is not None:
            if c:
                yield c

    def _run(self) -> FileSummary | None:
        it = self._chunks()
        prefix: list[bytes] = []
        size = 0
        for c in it:
            prefix.append(c)
            size += len(c)
            if size >= self.PREFIX_BYTES:
                break
        whole = size < self.PREFIX_BYTES  # the stream ended within the prefix
        if not whole:
            try:
                layout = csv_records.read_layout(list(prefix), csv_options(self.upload))
            except csv_records.FileError:
                layout = None
            if layout is None or layout.data_start.byte_offset > size - csv_records.MAX_RECORD_BYTES:
                for _ in it:  # the header is not surely inside the prefix: check the stored file instead
                    pass
                return None
        return summarize(list(prefix), itertools.chain(prefix, it), self.upload)


def _settle(fut: "asyncio.Future[FileSummary | None]", value: FileSummary | None, error: BaseException | None
            ) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def check_size_and_sha(summary: FileSummary, upload: BulkUpload, expected_sha: str) -> None:
    if upload.file_size_bytes and summary.size != upload.file_size_bytes:
        raise ServiceError(
            grpc.StatusCode.DATA_LOSS, "SIZE_MISMATCH",
            f"the file has {summary.size} bytes, but file_size_bytes said {upload.file_size_bytes}; "
            "upload it again (a new upload)",
            metadata={"size": str(summary.size), "expected": str(upload.file_size_bytes)})
    want = (expected_sha or upload.sha256).lower()
    if want and want != summary.sha256:
        raise ServiceError(
            grpc.StatusCode.DATA_LOSS, "SHA256_MISMATCH",
            f"the stored file's sha256 is {summary.sha256}, not the {want[:64]} given: bytes were lost or changed "
            "on the way; upload it again (a new upload)",
            metadata={"sha256": summary.sha256})


PIECE_BYTES = 1024 * 1024


def pieces(chunks: Iterable[bytes], spans: Iterable[tuple[int, int]], start: int = 0
           ) -> Iterator[tuple[int, bytes, bool]]:
    """The bytes of each (offset, length) span, in order (spans ascending,
    not overlapping), from a stream of the file that begins at `start`, as
    (span number, piece of at most PIECE_BYTES, last piece of the span).
    Nothing larger than a piece is ever held, whatever the span's size."""
    it = iter(chunks)
    buf = memoryview(b"")
    at = start  # the file offset of buf[0]
    for n, (off, length) in enumerate(spans):
        end = off + length
        if length == 0:
            yield n, b"", True
            continue
        pos = off
        while pos < end:
            if at + len(buf) <= pos:  # the buffer ends before what is wanted next
                try:
                    nxt = next(it)
                except StopIteration:
                    yield n, b"", True  # the file ended early (cannot happen for stored spans)
                    break
                at += len(buf)  # (skipping what lies between, if anything)
                buf = memoryview(nxt)
                continue
            lo = pos - at
            if lo < 0:
                raise ValueError("spans must ascend")
            take = min(len(buf) - lo, end - pos, PIECE_BYTES)
            piece = bytes(buf[lo:lo + take])
            pos += take
            yield n, piece, pos >= end


def heads(chunks: Iterable[bytes], spans: Iterable[tuple[int, int]], limit: int, start: int = 0) -> Iterator[bytes]:
    """Of each span, its first `limit` bytes (the rest is skipped, never held)."""
    current = -1
    got: list[bytes] = []
    size = 0
    for n, piece, last in pieces(chunks, spans, start):
        if n != current:
            current, got, size = n, [], 0
        if size < limit:
            got.append(piece[:limit - size])
            size += len(got[-1])
        if last:
            yield b"".join(got)
