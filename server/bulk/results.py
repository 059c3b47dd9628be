"""Every record's result in record order, and what is made of them: the
failed-records file and the log (CSV or JSON lines).

A record without a stored result is one the runner has not reached: once
the upload has ended it is NOT_PROCESSED, while it runs it is left out.
Such results are made here from a scan of the file (their offsets are
needed) rather than stored, so that an abort at the start of a large file
does not write a row per record. Everything here runs in read threads.
"""
from __future__ import annotations

import csv
import io
import json
import zlib
from typing import Any, Iterable, Iterator

from google.protobuf import json_format

from mediajobs.v1 import bulk_resources_pb2 as bres

from ..store import bulk_uploads as store_bulk
from . import csv_records
from .files import csv_options, heads, pieces

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult

ROWS_PER_QUERY = 1000
MESSAGE_BYTES = 1024 * 1024
# row_data (and a log row) shows at most this much of a record: a record
# that is larger is an error anyway (RECORD_TOO_LARGE), and every page and
# log message must stay readable.
MAX_ROW_DATA_BYTES = csv_records.MAX_RECORD_BYTES
LOG_COLUMNS = ["line", "record", "result_status", "object_id", "object_state", "job_ids", "error_code",
               "error_column", "error_message"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ResultScan:
    """Results of records after index `after`, in record order, optionally
    only of some statuses; iterate it. `position` is where the file scan
    (if one is needed) stands after the last result yielded, so that the
    next page can start there instead of at the top of the file."""

    def __init__(self, db: Any, project: str, upload: BulkUpload, after: int = 0, statuses: Iterable[int] = (),
                 start: csv_records.Position | None = None) -> None:
        self.db, self.project, self.upload, self.after = db, project, upload, after
        self.wanted = set(statuses)
        self.start = start
        self.position: csv_records.Position | None = None
        ended = upload.state in store_bulk.TERMINAL
        missing = upload.counts.total_records - upload.counts.applied
        # Only an ended upload with records that have no stored result needs
        # the file: such records are NOT_PROCESSED, or OK in a VALIDATED
        # upload (valid records get no row).
        self.validated = upload.state == BulkUpload.VALIDATED
        made = Result.OK if self.validated else Result.NOT_PROCESSED
        self.made_status = made
        self.scans = ended and (missing > 0 or self.validated) and (not self.wanted or made in self.wanted)

    def __iter__(self) -> Iterator[Result]:
        return self._merged() if self.scans else self._stored()

    def _stored(self) -> Iterator[Result]:
        return _stored_after(self.db, self.upload.id, self.after, sorted(self.wanted) or None)

    def _merged(self) -> Iterator[Result]:
        """The stored results merged with a scan of the file for the records
        that have none."""
        db, project, upload = self.db, self.project, self.upload
        options = csv_options(upload)
        layout = csv_records.read_layout(store_bulk.iter_file(db, project, upload.id), options)
        if self.start is not None and self.start.next_index > 1:
            records = csv_records.scan_records(
                store_bulk.iter_file(db, project, upload.id, self.start.byte_offset), options, layout, self.start)
        else:
            records = csv_records.scan_records(store_bulk.iter_file(db, project, upload.id), options, layout)
        stored = _stored_after(db, upload.id, self.after)
        nxt = next(stored, None)
        for rec in records:
            self.position = rec.end
            if rec.index <= self.after:
                continue
            while nxt is not None and nxt.record_index < rec.index:
                nxt = next(stored, None)
            if nxt is not None and nxt.record_index == rec.index:
                r = nxt
            else:
                r = Result(upload_id=upload.id, record_index=rec.index, line_number=rec.line_number,
                           status=self.made_status, object_type=BulkUpload.ENTRY, byte_offset=rec.byte_offset,
                           byte_length=rec.byte_length, attempts=1 if self.validated else 0)
                if rec.fields is not None:
                    r.action = rec.fields.action  # type: ignore[assignment]
                    r.title = rec.fields.name
                    r.reference_id = rec.fields.reference_id
            if not self.wanted or r.status in self.wanted:
                yield r


def iter_results(db: Any, project: str, upload: BulkUpload, after: int = 0,
                 statuses: Iterable[int] = ()) -> Iterator[Result]:
    return iter(ResultScan(db, project, upload, after, statuses))


def _stored_after(db: Any, upload_id: str, after: int, statuses: list[int] | None = None) -> Iterator[Result]:
    """Stored results after record `after`, in record order, a page of rows at a time."""
    last = after
    while True:
        rows = store_bulk.result_rows(db, upload_id, last, ROWS_PER_QUERY, statuses)
        yield from rows
        if len(rows) < ROWS_PER_QUERY:
            return
        last = rows[-1].record_index


def with_row_data(db: Any, project: str, upload: BulkUpload, results: list[Result]) -> None:
    """Fill row_data (the record as written, decoded) from the stored file;
    a record larger than MAX_ROW_DATA_BYTES shows only its beginning."""
    spans = [(r.byte_offset, r.byte_length) for r in results if r.byte_length]
    if not spans:
        return
    enc = "windows-1252" if csv_options(upload).encoding == "windows-1252" else "utf-8"
    start = spans[0][0]
    heads_it = heads(store_bulk.iter_file(db, project, upload.id, start), spans, MAX_ROW_DATA_BYTES, start)
    for r in results:
        if not r.byte_length:
            continue
        raw = next(heads_it)
        text = raw.decode(enc, errors="replace")
        if r.byte_length > MAX_ROW_DATA_BYTES:
            text += f"… ({r.byte_length} bytes in all; the file has the whole record)"
        r.row_data = text.rstrip("\r\n")


def failed_records_file(db: Any, project: str, upload: BulkUpload) -> Iterator[bytes]:
    """The header (the file's bytes before its first record) and the ERROR
    and NOT_PROCESSED records, byte-exact, in pieces of at most 1 MiB."""
    options = csv_options(upload)
    layout = csv_records.read_layout(store_bulk.iter_file(db, project, upload.id), options)
    yield from store_bulk.iter_file(db, project, upload.id, 0, layout.data_start.byte_offset)
    failed = iter_results(db, project, upload, 0, (Result.ERROR, Result.NOT_PROCESSED))
    spans = ((r.byte_offset, r.byte_length) for r in failed)
    first = next(spans, None)
    if first is None:
        return

    def all_spans() -> Iterator[tuple[int, int]]:
        yield first
        yield from spans

    ends_line = True
    for _n, piece, last in pieces(store_bulk.iter_file(db, project, upload.id, first[0]), all_spans(), first[0]):
        if piece:
            yield piece
            ends_line = piece.endswith(b"\n")
        if last and not ends_line:
            yield b"\n"  # a last record without a line break gets one, so that records never join
            ends_line = True


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading apostrophe
    (CWE-1236); nothing else changes."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def _status_parts(r: Result) -> tuple[str, str, str]:
    if not r.HasField("error"):
        return "", "", ""
    from google.rpc import error_details_pb2

    code = column = ""
    for d in r.error.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            code = info.reason
        elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            if br.field_violations:
                column = br.field_violations[0].field
    return code, column, r.error.message


def log_lines(db: Any, project: str, upload: BulkUpload, fmt: str, statuses: Iterable[int]) -> Iterator[bytes]:
    """The log, a row per record (CSV with a header row, or JSON lines)."""
    options = csv_options(upload)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow([neutralise(c) for c in list(upload.columns) + LOG_COLUMNS])
        yield buf.getvalue().encode()
    batch: list[Result] = []
    for r in iter_results(db, project, upload, 0, statuses):
        batch.append(r)
        if len(batch) >= ROWS_PER_QUERY:
            yield from _log_batch(db, project, upload, batch, fmt, options)
            batch = []
    if batch:
        yield from _log_batch(db, project, upload, batch, fmt, options)


def _log_batch(db: Any, project: str, upload: BulkUpload, batch: list[Result], fmt: str,
               options: csv_records.CsvOptions) -> Iterator[bytes]:
    with_row_data(db, project, upload, batch)
    buf = io.StringIO()
    if fmt == "jsonl":
        for r in batch:
            buf.write(json.dumps(json_format.MessageToDict(r, preserving_proto_field_name=True),
                                 separators=(",", ":"), ensure_ascii=False))
            buf.write("\n")
        yield buf.getvalue().encode()
        return
    w = csv.writer(buf, lineterminator="\r\n")
    for r in batch:
        try:
            values = next(csv.reader([r.row_data], delimiter=options.delimiter))
        except (csv.Error, StopIteration):
            values = [r.row_data]
        code, column, message = _status_parts(r)
        row = values + [str(r.line_number), str(r.record_index), Result.Status.Name(r.status), r.object_id,
                        r.object_state, " ".join(r.job_ids), code, column, message.replace("\n", " ")]
        w.writerow([neutralise(c) for c in row])
    yield buf.getvalue().encode()


def messages(parts: Iterator[bytes], limit: int = MESSAGE_BYTES) -> Iterator[tuple[bytes, int]]:
    """Re-cut a byte stream into messages of at most `limit` bytes, with
    their crc32."""
    buf = bytearray()
    for part in parts:
        buf += part
        while len(buf) >= limit:
            out = bytes(buf[:limit])
            del buf[:limit]
            yield out, zlib.crc32(out)
    if buf:
        out = bytes(buf)
        yield out, zlib.crc32(out)
