"""Reading a stored upload file: the finish-time check, and the original
bytes of records (for the failed-records file, the log and row_data).

Everything here streams over the file's chunks (store/bulk_uploads.iter_file)
and runs in a thread, never on the event loop."""
from __future__ import annotations

import hashlib
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
        for rec in csv_records.scan_records(tee, options, layout):
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
