"""CSV bulk uploads: the stored file, the upload's state and counts, and one
result row per record (mutations run in the group-commit writer; reads take
the database).

- The file is stored byte-exact as chunk rows (one per WriteBulkUploadFile
  message), so what is committed survives kill -9, works the same on
  PostgreSQL, and `uploaded_bytes` is exactly where a broken write resumes.
- A complete, checked file becomes QUEUED with an ordinary BULK_UPLOAD job
  in the same transaction; the runner (bulk/runner.py) leases it like any
  worker and applies the records in batches through `apply_batch`, which
  writes each record's objects, its result row, the counts and the resume
  point in one transaction. A record's result row is keyed by
  (upload, record index): a batch replayed after a crash finds its rows and
  creates nothing twice.
- Results follow their entries: `on_entry_state` (an entries hook, run in
  the entry's transaction) turns an IN_PROGRESS result OK or ERROR when its
  entry settles, and settles the upload when no record is left open.
- The upload follows its BULK_UPLOAD job: aborted or failed by anyone (the
  runner, AbortJob, the lease sweeper), the upload follows in the same
  transaction (`on_job_state`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import grpc
import peewee
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from ..ids import IdSource, new_id

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from ..convert import set_ts
from ..errors import ServiceError, clip, invalid_argument
from . import entries as store_entries
from . import jobs as store_jobs
from .templates import get_file_template
from .writer import WriteTx

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
Job = res.Job
Entry = mres.Entry

JOB_TYPE = "BULK_UPLOAD"
UPLOAD_KEY = "bulk_upload_id"

# Limits, stated in the README.
MAX_FILE_BYTES = 1024 * 1024 * 1024
MAX_RECORDS = 5_000_000
MAX_INLINE_BYTES = 3 * 1024 * 1024
MAX_WRITE_MESSAGE_BYTES = 2 * 1024 * 1024
MAX_OPEN_UPLOADS = 16  # UPLOADING, per project
READ_CHUNK_ROWS = 4  # chunk rows read per query while streaming the file

TERMINAL = frozenset({BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED,
                      BulkUpload.ABORTED, BulkUpload.EXPIRED, BulkUpload.VALIDATED})


def state_name(s: int) -> str:
    return BulkUpload.State.Name(s) if s in BulkUpload.State.values() else str(s)  # type: ignore[arg-type]


def upload_not_found(upload_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, "BULK_UPLOAD_NOT_FOUND",
        f"bulk upload {clip(upload_id)} does not exist; list them with ListBulkUploads",
        metadata={"bulk_upload_id": upload_id}, resource=("mediajobs.v1.BulkUpload", upload_id),
    )


def wrong_state(upload: BulkUpload, action: str, reason: str, hint: str) -> ServiceError:
    st = state_name(upload.state)
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, reason, f"cannot {action} bulk upload {upload.id}: it is {st}; {hint}",
        metadata={"bulk_upload_id": upload.id, "state": st},
        precondition=("STATE", f"bulkUploads/{upload.id}", f"bulk upload is {st}"),
    )


# -- rows ------------------------------------------------------------------------------


def load_upload(db: peewee.Database, project: str, upload_id: str) -> BulkUpload:
    p = db.param
    row = db.execute_sql(f"SELECT data FROM bulk_uploads WHERE id = {p} AND project = {p}",
                         (upload_id, project)).fetchone()
    if row is None:
        raise upload_not_found(upload_id)
    return BulkUpload.FromString(bytes(row[0]))


@dataclasses.dataclass
class ResumePoint:
    byte_offset: int = 0
    line_number: int = 0
    next_index: int = 0  # 0: not started (the runner starts at the data's start)


def load_resume(db: peewee.Database, project: str, upload_id: str) -> ResumePoint:
    p = db.param
    row = db.execute_sql(
        f"SELECT resume_offset, resume_line, resume_index FROM bulk_uploads WHERE id = {p} AND project = {p}",
        (upload_id, project)).fetchone()
    if row is None:
        raise upload_not_found(upload_id)
    return ResumePoint(int(row[0]), int(row[1]), int(row[2]))


def _save(tx: WriteTx, upload: BulkUpload, resume: ResumePoint | None = None) -> None:
    set_ts(upload.update_time, tx.now)
    if upload.state in TERMINAL and not upload.HasField("end_time"):
        set_ts(upload.end_time, tx.now)
    p = tx.db.param
    sets = f"state = {p}, update_time = {p}, uploaded_bytes = {p}, data = {p}"
    args: list[Any] = [upload.state, tx.now, upload.uploaded_bytes, upload.SerializeToString()]
    if resume is not None:
        sets += f", resume_offset = {p}, resume_line = {p}, resume_index = {p}"
        args += [resume.byte_offset, resume.line_number, resume.next_index]
    tx.db.execute_sql(f"UPDATE bulk_uploads SET {sets} WHERE id = {p}", (*args, upload.id))


def _next_number(tx: WriteTx) -> int:
    p = tx.db.param
    tx.db.execute_sql(f"UPDATE store_meta SET value = value + 1 WHERE key = {p}", ("bulk_upload_number",))
    return int(tx.db.execute_sql(f"SELECT value FROM store_meta WHERE key = {p}",
                                 ("bulk_upload_number",)).fetchone()[0])


# -- the upload ---------------------------------------------------------------------------


def start_upload(tx: WriteTx, req: bsvc.StartBulkUploadRequest, creator: str,
                 max_open: int = MAX_OPEN_UPLOADS) -> BulkUpload:
    """A new upload, UPLOADING (the service completes it at once when the
    file came inline)."""
    spec = req.bulk_upload
    if spec.template_id:
        get_file_template(tx.db, tx.project, spec.template_id)  # NOT_FOUND, TEMPLATE_IS_LIVE
    p = tx.db.param
    open_now = tx.db.execute_sql(f"SELECT COUNT(*) FROM bulk_uploads WHERE project = {p} AND state = {p}",
                                 (tx.project, BulkUpload.UPLOADING)).fetchone()[0]
    if open_now >= max_open and not req.content:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_OPEN_UPLOADS",
            f"quota open_bulk_uploads: the project already has {max_open} uploads still being written (the "
            "limit, --quota-open-bulk-uploads); finish or "
            "abort one of them (ListBulkUploads with state UPLOADING) first",
            metadata={"limit": str(max_open), "quota": "open_bulk_uploads"}, retry_delay_s=5.0,
        )
    upload = BulkUpload()
    upload.CopyFrom(spec)
    upload.id = new_id()
    upload.number = _next_number(tx)
    upload.state = BulkUpload.UPLOADING
    upload.format = BulkUpload.CSV
    upload.object_type = BulkUpload.ENTRY
    upload.uploaded_by = spec.uploaded_by or creator
    upload.generation = 1
    set_ts(upload.create_time, tx.now)
    set_ts(upload.update_time, tx.now)
    tx.db.execute_sql(
        "INSERT INTO bulk_uploads (id, project, number, state, uploaded_by, create_time, update_time, "
        f"uploaded_bytes, resume_offset, resume_line, resume_index, data) VALUES ({', '.join([p] * 12)})",
        (upload.id, tx.project, upload.number, upload.state, upload.uploaded_by, tx.now, tx.now, 0, 0, 0, 0,
         upload.SerializeToString()),
    )
    return upload


def _writable(tx: WriteTx, upload_id: str) -> BulkUpload:
    upload = load_upload(tx.db, tx.project, upload_id)
    if upload.state != BulkUpload.UPLOADING:
        raise wrong_state(upload, "write to", "UPLOAD_NOT_WRITABLE",
                          "its file is complete (read it with ReadBulkUploadFile), or start a new upload")
    return upload


def offset_mismatch(upload_id: str, offset: int, committed: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.OUT_OF_RANGE, "WRITE_OFFSET_MISMATCH",
        f"write_offset {offset} is not where bulk upload {upload_id} continues: {committed} bytes are stored; "
        f"resume with write_offset {committed}",
        metadata={"bulk_upload_id": upload_id, "committed_size": str(committed)},
    )


def append_chunk(tx: WriteTx, upload_id: str, offset: int, data: bytes, crc32: int) -> int:
    """Store one message's bytes at `offset` (which must be the stored size);
    returns the new stored size."""
    upload = _writable(tx, upload_id)
    if offset != upload.uploaded_bytes:
        raise offset_mismatch(upload_id, offset, upload.uploaded_bytes)
    end = offset + len(data)
    limit = upload.file_size_bytes or MAX_FILE_BYTES
    if end > min(limit, MAX_FILE_BYTES):
        what = (f"the declared file_size_bytes {upload.file_size_bytes}" if upload.file_size_bytes
                else f"the file size limit of {MAX_FILE_BYTES} bytes (1 GiB)")
        raise invalid_argument([("data", f"writing past {what}; split the file")], reason="FILE_TOO_LARGE")
    if data:
        p = tx.db.param
        tx.db.execute_sql(f"INSERT INTO bulk_upload_chunks (upload_id, byte_offset, crc32, data) "
                          f"VALUES ({p}, {p}, {p}, {p})", (upload_id, offset, crc32, data))
        upload.uploaded_bytes = end
        _save(tx, upload)
    return end


@dataclasses.dataclass
class FileSummary:
    """What the finish pass found in a complete file (bulk/files.py)."""

    size: int
    sha256: str
    csv_version: int
    columns: list[str]
    warnings: list[str]
    total_records: int
    skipped_lines: int
    data_offset: int
    data_line: int


def finish_upload(tx: WriteTx, upload_id: str, summary: FileSummary) -> BulkUpload:
    """The file is complete and checked: QUEUED, with its BULK_UPLOAD job."""
    upload = _writable(tx, upload_id)
    if upload.uploaded_bytes != summary.size:  # written meanwhile by another stream
        raise offset_mismatch(upload_id, summary.size, upload.uploaded_bytes)
    upload.sha256 = summary.sha256
    upload.file_size_bytes = summary.size
    upload.csv_version = summary.csv_version
    upload.columns[:] = summary.columns
    upload.warnings[:] = summary.warnings[:20]
    upload.counts.total_records = summary.total_records
    upload.counts.skipped_lines = summary.skipped_lines
    set_ts(upload.upload_complete_time, tx.now)
    if summary.total_records == 0:
        upload.state = BulkUpload.SUCCEEDED  # nothing to do (Kaltura: an empty file is not a failure)
        _save(tx, upload, ResumePoint(summary.data_offset, summary.data_line, 1))
        return upload
    upload.state = BulkUpload.QUEUED
    _queue_job(tx, upload)
    _save(tx, upload, ResumePoint(summary.data_offset, summary.data_line, 1))
    return upload


def _queue_job(tx: WriteTx, upload: BulkUpload, selection: int = 0) -> None:
    req = svc.CreateJobRequest(type=JOB_TYPE, priority=Job.MEDIUM, creator=upload.uploaded_by or "anonymous",
                               metadata={UPLOAD_KEY: upload.id}, max_attempts=10)
    req.params.update({"bulk_upload_id": upload.id, "generation": upload.generation, "selection": selection})
    job = store_jobs.new_job(tx, req)
    upload.job_id = job.id


def refuse_file(tx: WriteTx, upload_id: str, error: ServiceError) -> BulkUpload:
    """The file is refused as a whole: FAILED with the error; its bytes go."""
    upload = _writable(tx, upload_id)
    upload.state = BulkUpload.FAILED
    upload.error.CopyFrom(error.to_status())
    _delete_chunks(tx, upload_id)
    upload.uploaded_bytes = 0
    _save(tx, upload)
    return upload


def _delete_chunks(tx: WriteTx, upload_id: str) -> None:
    tx.db.execute_sql(f"DELETE FROM bulk_upload_chunks WHERE upload_id = {tx.db.param}", (upload_id,))


def write_status(db: peewee.Database, project: str, upload_id: str) -> bsvc.QueryBulkUploadWriteStatusResponse:
    upload = load_upload(db, project, upload_id)
    return bsvc.QueryBulkUploadWriteStatusResponse(
        committed_size=upload.uploaded_bytes, complete=upload.state != BulkUpload.UPLOADING)


def iter_file(db: peewee.Database, project: str, upload_id: str, start: int = 0, end: int | None = None
              ) -> Iterator[bytes]:
    """The stored file from byte `start` (to `end`), a few chunk rows per
    query, so that memory does not grow with the file. Call in a thread."""
    load_upload(db, project, upload_id)
    p = db.param
    off = "byte_offset"
    row = db.execute_sql(
        f"SELECT {off} FROM bulk_upload_chunks WHERE upload_id = {p} AND {off} <= {p} ORDER BY {off} DESC LIMIT 1",
        (upload_id, start)).fetchone()
    at = int(row[0]) if row is not None else 0
    while True:
        rows = db.execute_sql(
            f"SELECT {off}, data FROM bulk_upload_chunks WHERE upload_id = {p} AND {off} >= {p} "
            f"ORDER BY {off} LIMIT {READ_CHUNK_ROWS}", (upload_id, at)).fetchall()
        if not rows:
            return
        for o, data in rows:
            o = int(o)
            data = bytes(data)
            lo = max(start - o, 0)
            hi = len(data) if end is None else min(len(data), end - o)
            if hi > lo:
                yield data[lo:hi]
            at = o + len(data)
            if end is not None and at >= end:
                return
        if len(rows) < READ_CHUNK_ROWS:
            return


# -- reads ------------------------------------------------------------------------------


def list_uploads(db: peewee.Database, project: str, req: bsvc.ListBulkUploadsRequest) -> bsvc.ListBulkUploadsResponse:
    size = store_jobs.page_size(req.page_size, default=50)
    fp = store_jobs.list_fingerprint(req)
    p = db.param
    where = [f"project = {p}"]
    args: list[Any] = [project]
    if req.states:
        where.append(f"state IN ({', '.join([p] * len(req.states))})")
        args += list(req.states)
    if req.uploaded_by:
        where.append(f"uploaded_by = {p}")
        args.append(req.uploaded_by)
    for ts, op in ((req.create_time_from, ">="), (req.create_time_to, "<")):
        if ts.seconds or ts.nanos:
            where.append(f"create_time {op} {p}")
            args.append(ts.seconds * 1_000_000 + ts.nanos // 1000)
    total = int(db.execute_sql(f"SELECT COUNT(*) FROM bulk_uploads WHERE {' AND '.join(where)}", args).fetchone()[0])
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        where.append(f"id < {p}")
        args.append(str(last))
    rows = db.execute_sql(f"SELECT id, data FROM bulk_uploads WHERE {' AND '.join(where)} ORDER BY id DESC "
                          f"LIMIT {size + 1}", args).fetchall()
    out = bsvc.ListBulkUploadsResponse(total_size=total)
    budget = payloads.MessageBudget()
    for row_id, data in rows[:size]:
        data = bytes(data)
        if not budget.admit(len(data)):
            out.next_page_token = store_jobs.encode_token([out.bulk_uploads[-1].id], fp)
            return out
        out.bulk_uploads.append(BulkUpload.FromString(data))
    if len(rows) > size:
        out.next_page_token = store_jobs.encode_token([rows[size - 1][0]], fp)
    return out


def result_rows(db: peewee.Database, upload_id: str, after: int, limit: int, statuses: list[int] | None = None
                ) -> list[Result]:
    """Stored results after record `after`, in record order."""
    p = db.param
    where = f"upload_id = {p} AND record_index > {p}"
    args: list[Any] = [upload_id, after]
    if statuses:
        where += f" AND status IN ({', '.join([p] * len(statuses))})"
        args += statuses
    rows = db.execute_sql(f"SELECT data FROM bulk_upload_lines WHERE {where} ORDER BY record_index LIMIT {int(limit)}",
                          args).fetchall()
    return [Result.FromString(bytes(r[0])) for r in rows]


def last_result(db: peewee.Database, project: str, upload_id: str) -> bsvc.GetBulkUploadLastResultResponse:
    load_upload(db, project, upload_id)
    p = db.param
    row = db.execute_sql(f"SELECT data FROM bulk_upload_lines WHERE upload_id = {p} AND status != {p} "
                         "ORDER BY record_index DESC LIMIT 1", (upload_id, Result.NOT_PROCESSED)).fetchone()
    out = bsvc.GetBulkUploadLastResultResponse()
    if row is not None:
        out.result.CopyFrom(Result.FromString(bytes(row[0])))
    return out


def count_results(db: peewee.Database, project: str, upload_id: str) -> bsvc.CountBulkUploadResultsResponse:
    c = load_upload(db, project, upload_id).counts
    return bsvc.CountBulkUploadResultsResponse(
        created=c.ok + c.in_progress, error=c.error, ok=c.ok, in_progress=c.in_progress,
        not_processed=c.not_processed)


# -- applying records (the runner's writes) ------------------------------------------------


def _counts_add(c: BulkUpload.Counts, status: int, n: int) -> None:
    if status == Result.OK:
        c.ok += n
    elif status == Result.IN_PROGRESS:
        c.in_progress += n
    elif status == Result.ERROR:
        c.error += n
    elif status == Result.NOT_PROCESSED:
        c.not_processed += n


def _lease_check(tx: WriteTx, job_id: str, token: str) -> Job:
    from . import leases

    job, _ = leases._leased(tx, job_id, token)
    return job


@dataclasses.dataclass
class Planned:
    """A record as the runner prepared it outside the writer."""

    index: int
    line_number: int
    line_count: int
    byte_offset: int
    byte_length: int
    fields: Any  # csv_records.EntryFields | None
    error: ServiceError | None  # the record is invalid (or its source is)
    error_column: str = ""
    source: str = ""  # resolved under the storage root
    add: msvc.CreateEntryRequest | None = None  # prepared outside the writer (add_request)
    prepared: store_entries.PreparedEntry | None = None  # the entry itself, made ready outside the writer
    result: Result | None = None  # with `prepared`: its result, but for attempts and update_time


def prepare_add(db: Any, project: str, now_us: int, upload: BulkUpload, rec: Planned, templates: dict[str, Any],
                new_id: IdSource) -> None:
    """Make a record that adds an entry ready outside the writer (the
    runner's read thread): the entry, its job and its result, so that the
    writer only numbers and writes them. Raises ServiceError for a record
    that cannot add its entry."""
    rec.add = add_request(upload, rec)
    rec.prepared = store_entries.prepare_entry(db, project, now_us, rec.add, rec.source, templates, new_id)
    rec.result = _entry_result(_new_result(upload, rec), rec.prepared.entry)


@dataclasses.dataclass
class BatchOutcome:
    upload: BulkUpload
    stop: str  # "" to go on; "aborted" when the job is ABORTING


def apply_batch(
    tx: WriteTx, upload_id: str, job_id: str, token: str, records: list[Planned], resume: ResumePoint | None,
    generation: int, selection: frozenset[int] | None, validate: bool, valid: int = 0,
) -> BatchOutcome:
    """Apply `records` (contiguous, in order) in this one transaction: each
    record's objects and result row, the counts and the resume point. A
    record that already has its result for this generation is left alone
    (a replay after a crash). `selection` (re-runs): only records whose
    stored status is in it (None: records without a result). `validate`:
    results only, nothing created; `valid` more records (left out of
    `records`) were valid, and are counted OK without a row."""
    from . import leases

    job, _ = leases.heartbeat(tx, job_id, token, 0, "", None, 0)
    upload = load_upload(tx.db, tx.project, upload_id)
    if job.state == Job.ABORTING or upload.state in (BulkUpload.ABORTING, BulkUpload.ABORTED):
        return BatchOutcome(upload, "aborted")
    if valid:
        upload.counts.applied += valid
        upload.counts.ok += valid
    if not records:
        _save(tx, upload, resume)
        return BatchOutcome(upload, "")
    p = tx.db.param
    lo, hi = records[0].index, records[-1].index
    # Results already stored in this range: (status, generation), and for a
    # re-run the attempts so far (the stored result is read only then).
    data_col = "data" if selection is not None else "NULL"
    stored: dict[int, tuple[int, int]] = {}
    attempts: dict[int, int] = {}
    for i, st, g, data in tx.db.execute_sql(
            f"SELECT record_index, status, generation, {data_col} FROM bulk_upload_lines WHERE upload_id = {p} "
            f"AND record_index >= {p} AND record_index <= {p}", (upload_id, lo, hi)).fetchall():
        stored[int(i)] = (int(st), int(g))
        if data is not None:
            attempts[int(i)] = Result.FromString(bytes(data)).attempts
    c = upload.counts
    new_rows: list[tuple[Any, ...]] = []
    objects: list[tuple[Any, ...]] = []
    # (record, its result, its stored (status, generation), the CreateEntry
    # to make it from; None when the runner prepared the entry already)
    adds: list[tuple[Planned, Result, tuple[int, int] | None, msvc.CreateEntryRequest | None]] = []

    def record(result: Result, old: tuple[int, int] | None) -> None:
        if old is None:
            result.attempts = 1
            set_ts(result.update_time, tx.now)
            new_rows.append((upload_id, result.record_index, result.status, generation, result.SerializeToString()))
            c.applied += 1
        else:
            result.attempts = attempts.get(result.record_index, 0) + 1
            _put_result(tx, upload_id, result, generation, replace=True)
            _counts_add(c, old[0], -1)
        _counts_add(c, result.status, 1)
        if result.status == Result.IN_PROGRESS:
            objects.append((tx.project, result.object_id, upload_id, result.record_index))

    def flush_adds() -> None:
        """The pending ADD records, created together (their order among
        themselves does not matter: nothing in one can refer to another)."""
        if not adds:
            return
        templates: dict[str, Any] = {}
        ready: list[tuple[Planned, Result, tuple[int, int] | None, store_entries.PreparedEntry]] = []
        for rec, r, old, req in adds:
            pe = rec.prepared
            if pe is None and req is not None:
                try:
                    pe = store_entries.prepare_entry(tx.db, tx.project, tx.now, req, rec.source, templates)
                except ServiceError as e:
                    record(_record_error(r, e, _column_of(e), Result.OBJECT), old)
                    continue
            assert pe is not None
            ready.append((rec, r, old, pe))
        store_entries.insert_prepared(tx, [pe for _, _, _, pe in ready])
        for rec, r, old, pe in ready:
            c.objects_created += 1
            record(r if rec.result is not None else _entry_result(r, pe.entry), old)
        adds.clear()

    for rec in records:
        old = stored.get(rec.index)
        if selection is None:
            if old is not None:
                continue  # applied already: a batch replayed after a crash
        elif old is not None and old[1] >= generation:
            continue  # re-applied already in this re-run
        elif (old[0] if old is not None else Result.NOT_PROCESSED) not in selection:
            continue  # not selected for this re-run
        if upload.max_errors and c.error >= upload.max_errors and not validate:
            continue  # stopped: left without a result, NOT_PROCESSED when the upload ends
        if validate and rec.error is None and old is None:
            # A valid record: counted, no row (results/ResultScan shows it OK
            # once the upload is VALIDATED), so validation runs at parse speed.
            c.applied += 1
            c.ok += 1
            continue
        if not validate and rec.error is None and rec.fields.action == Result.ADD:
            if rec.result is not None:
                adds.append((rec, rec.result, old, None))  # prepared whole by the runner
                continue
            r = _new_result(upload, rec)
            try:
                adds.append((rec, r, old, rec.add or add_request(upload, rec)))
            except ServiceError as e:
                record(_record_error(r, e, _column_of(e), Result.VALIDATION), old)
            continue
        flush_adds()  # an update or delete may name an entry added just before
        record(_apply_one(tx, upload, rec, validate), old)
    flush_adds()
    cursor = tx.db.cursor()
    if new_rows:
        cursor.executemany(f"INSERT INTO bulk_upload_lines (upload_id, record_index, status, generation, data) "
                           f"VALUES ({p}, {p}, {p}, {p}, {p})", new_rows)
    if objects:
        cursor.executemany(f"INSERT INTO bulk_upload_objects (project, object_id, upload_id, record_index) "
                           f"VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (project, object_id) DO UPDATE SET "
                           "upload_id = excluded.upload_id, record_index = excluded.record_index", objects)
    _save(tx, upload, resume)
    return BatchOutcome(upload, "")


def _put_result(tx: WriteTx, upload_id: str, result: Result, generation: int, replace: bool) -> None:
    set_ts(result.update_time, tx.now)
    p = tx.db.param
    if replace:
        tx.db.execute_sql(f"UPDATE bulk_upload_lines SET status = {p}, generation = {p}, data = {p} "
                          f"WHERE upload_id = {p} AND record_index = {p}",
                          (result.status, generation, result.SerializeToString(), upload_id, result.record_index))
    else:
        tx.db.execute_sql(f"INSERT INTO bulk_upload_lines (upload_id, record_index, status, generation, data) "
                          f"VALUES ({p}, {p}, {p}, {p}, {p})",
                          (upload_id, result.record_index, result.status, generation, result.SerializeToString()))


def _new_result(upload: BulkUpload, rec: Planned) -> Result:
    r = Result(upload_id=upload.id, record_index=rec.index, line_number=rec.line_number,
               object_type=BulkUpload.ENTRY, byte_offset=rec.byte_offset, byte_length=rec.byte_length)
    f = rec.fields
    if f is not None:
        r.action = f.action
        r.title = f.name
        r.reference_id = f.reference_id
        r.partner_data = f.partner_data
        if f.plugins_data:
            r.plugins_data.update(f.plugins_data)
    return r


def _record_error(r: Result, err: ServiceError, column: str, error_type: int) -> Result:
    if column and not err.violations:
        err = dataclasses.replace(err, violations=[(column, err.message)])
    r.status = Result.ERROR
    r.error.CopyFrom(err.to_status())
    r.error_type = error_type  # type: ignore[assignment]
    return r


def _apply_one(tx: WriteTx, upload: BulkUpload, rec: Planned, validate: bool) -> Result:
    r = _new_result(upload, rec)
    if rec.error is not None:
        return _record_error(r, rec.error, rec.error_column, Result.VALIDATION)
    if validate:
        r.status = Result.OK
        return r
    mark = tx.mark()
    try:
        with tx.db.atomic():  # a savepoint: a failing record leaves nothing behind
            return _change_entry(tx, upload, rec, r)
    except ServiceError as e:
        tx.rollback_to(mark)
        r.ClearField("object_id")
        r.ClearField("object_state")
        del r.job_ids[:]
        column = _column_of(e)
        return _record_error(r, e, column, Result.OBJECT)


def _column_of(e: ServiceError) -> str:
    if e.reason == "TEMPLATE_NOT_FOUND":
        return "template_id"
    if e.reason in ("SOURCE_NOT_FOUND", "PATH_OUTSIDE_STORAGE_ROOT"):
        return "source_uri"
    if e.reason == "ENTRY_NOT_FOUND":
        return "entry_id"
    return ""


def _entry_labels(upload: BulkUpload, f: Any) -> dict[str, str]:
    labels = dict(f.labels)
    for key, value in (("content_type", f.content_type), ("partner_data", f.partner_data),
                       ("schedule_start_time", f.schedule_start_time), ("schedule_end_time", f.schedule_end_time)):
        if value:
            labels[key] = value
    labels["bulk_upload_id"] = upload.id
    return labels


def _change_entry(tx: WriteTx, upload: BulkUpload, rec: Planned, r: Result) -> Result:
    f = rec.fields
    action = f.action
    target = ""
    if action == Result.ADD_OR_UPDATE:
        target = store_entries.find_by_reference(tx.db, tx.project, f.reference_id)
        action = Result.UPDATE if target else Result.ADD
    template_id = f.template_id or upload.template_id
    priority = f.priority or upload.priority or Job.LOW
    if action == Result.ADD:
        entry = store_entries.create_entry(tx, add_request(upload, rec), rec.source)
        upload.counts.objects_created += 1
    elif action == Result.DELETE:
        store_entries.delete_entry(tx, f.entry_id, allow_missing=False)
        r.object_id = f.entry_id
        r.object_state = "DELETED"
        r.status = Result.OK
        return r
    else:  # UPDATE, REPLACE
        entry_id = target or f.entry_id
        entry = store_entries.update_entry(
            tx, entry_id, name=f.name, description=f.description, tags=f.tags, reference_id=f.reference_id,
            labels=_entry_labels(upload, f), owner=f.owner,
        )
        if action == Result.REPLACE or (rec.source and rec.source != entry.source_uri):
            entry = store_entries.replace_source(tx, entry_id, rec.source, template_id, priority)
    return _entry_result(r, entry)


def add_request(upload: BulkUpload, rec: Planned) -> msvc.CreateEntryRequest:
    """The CreateEntry a record that adds an entry stands for; refuses a
    record without a name or with labels past the limits. (The runner makes
    it while it reads the record, outside the writer.)"""
    f = rec.fields
    if not f.name:
        raise invalid_argument([("name", "required to add an entry: give the record a title / name")],
                               reason="MISSING_VALUE")
    labels = _entry_labels(upload, f)
    violations = payloads.metadata_violations(labels, "labels")
    if violations:
        raise invalid_argument(violations, reason="LABELS_INVALID")
    req = msvc.CreateEntryRequest(priority=f.priority or upload.priority or Job.LOW,  # type: ignore[arg-type]
                                  creator=f.owner or upload.uploaded_by)
    e = req.entry  # filled in place: a message given to a constructor would be copied
    e.name = f.name
    e.description = f.description
    e.tags.extend(f.tags)
    e.reference_id = f.reference_id
    if rec.source:
        e.template_id = f.template_id or upload.template_id
    e.labels.update(labels)
    return req


_ENTRY_STATE_NAMES = {v: k for k, v in Entry.State.items()}


def _entry_result(r: Result, entry: Entry) -> Result:
    """A record's result from the entry it made or changed."""
    r.object_id = entry.id
    r.object_state = _ENTRY_STATE_NAMES[entry.state]
    del r.job_ids[:]
    r.job_ids.extend(entry.job_ids[-8:])
    if entry.state in (Entry.PENDING, Entry.PROCESSING) and entry.job_ids:
        r.status = Result.IN_PROGRESS
    elif entry.state == Entry.ERROR:
        r.status = Result.ERROR
        r.error_type = Result.OBJECT
        r.object_error = entry.error.message
        r.error.CopyFrom(entry.error)
    else:
        r.status = Result.OK
    return r


def finish_run(tx: WriteTx, upload_id: str, job_id: str, token: str, stopped: str) -> BulkUpload:
    """The runner went through every record (or stopped): complete its job
    and move the upload on (WAITING_FOR_OBJECTS, or terminal)."""
    from . import leases

    upload = load_upload(tx.db, tx.project, upload_id)
    result = struct_pb2.Struct()
    result.update({"bulk_upload_id": upload.id, "ok": upload.counts.ok, "error": upload.counts.error,
                   "in_progress": upload.counts.in_progress, "applied": upload.counts.applied})
    job = leases.complete(tx, job_id, token, result)  # ABORTING -> ABORTED (and the hook below settles the upload)
    upload = load_upload(tx.db, tx.project, upload_id)
    if job.state == Job.ABORTED or upload.state in (BulkUpload.ABORTING, BulkUpload.ABORTED):
        return upload
    if stopped == "validate_first_failed":
        _end(tx, upload, BulkUpload.FAILED)
        upload.error.CopyFrom(status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=f"{upload.counts.error} records are invalid and error_policy is VALIDATE_FIRST: nothing was "
                    "created; fix them (ReadBulkUploadLog, or ReadBulkUploadFile with FAILED_RECORDS) and upload "
                    "again"))
        _save(tx, upload)
        return upload
    if upload.validate_only and upload.generation == 1:
        _end(tx, upload, BulkUpload.VALIDATED)
        _save(tx, upload)
        return upload
    settle(tx, upload)
    _save(tx, upload)
    return upload


def _end(tx: WriteTx, upload: BulkUpload, state: int) -> None:
    c = upload.counts
    c.not_processed = max(c.total_records - c.ok - c.in_progress - c.error, 0)
    upload.state = state  # type: ignore[assignment]
    set_ts(upload.end_time, tx.now)


def settle(tx: WriteTx, upload: BulkUpload) -> None:
    """Terminal once every record is applied and none is IN_PROGRESS."""
    c = upload.counts
    if c.in_progress > 0:
        upload.state = BulkUpload.WAITING_FOR_OBJECTS
        return
    not_processed = max(c.total_records - c.ok - c.error, 0)
    if c.ok == c.total_records:
        state = BulkUpload.SUCCEEDED
    elif c.ok == 0:
        state = BulkUpload.FAILED
        if not upload.HasField("error"):
            upload.error.CopyFrom(status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION,
                message=f"no record succeeded ({c.error} failed, {not_processed} not processed); see the log "
                        "(ReadBulkUploadLog)"))
    else:
        state = BulkUpload.PARTIALLY_SUCCEEDED
    upload.ClearField("end_time")
    _end(tx, upload, state)


# -- hooks: results follow entries, uploads follow their jobs ----------------------------------


def on_entry_state(tx: WriteTx, entry: Entry) -> None:
    """entries.ENTRY_HOOKS member: the result of the record that last
    created or changed this entry follows the entry's state."""
    p = tx.db.param
    row = tx.db.execute_sql(f"SELECT upload_id, record_index FROM bulk_upload_objects WHERE project = {p} "
                            f"AND object_id = {p}", (tx.project, entry.id)).fetchone()
    if row is None:
        return
    upload_id, index = row[0], int(row[1])
    line = tx.db.execute_sql(f"SELECT data, generation FROM bulk_upload_lines WHERE upload_id = {p} "
                             f"AND record_index = {p}", (upload_id, index)).fetchone()
    if line is None:
        return
    r = Result.FromString(bytes(line[0]))
    old = r.status
    r.object_state = Entry.State.Name(entry.state)
    if entry.state == Entry.READY:
        r.status = Result.OK
        r.ClearField("error")
        r.object_error = ""
    elif entry.state == Entry.ERROR:
        r.status = Result.ERROR
        r.error_type = Result.OBJECT
        r.object_error = payloads.cut(entry.error.message, 1024)
        r.error.CopyFrom(status_pb2.Status(code=entry.error.code or code_pb2.UNKNOWN,
                                           message=payloads.cut(entry.error.message, 1024)))
    else:
        r.status = Result.IN_PROGRESS
    r.job_ids[:] = list(entry.job_ids)[-8:]
    _put_result(tx, upload_id, r, int(line[1]), replace=True)
    if r.status == old:
        return
    upload = load_upload(tx.db, tx.project, upload_id)
    _counts_add(upload.counts, old, -1)
    _counts_add(upload.counts, r.status, 1)
    if upload.state == BulkUpload.WAITING_FOR_OBJECTS or (upload.state in TERMINAL and upload.state not in (
            BulkUpload.ABORTED, BulkUpload.VALIDATED, BulkUpload.EXPIRED)):
        settle(tx, upload)
    _save(tx, upload)


def on_job_state(tx: WriteTx, job: Job, etype: int, prev_state: int) -> None:
    """jobs.STATE_HOOKS member: the upload follows its BULK_UPLOAD job:
    leased -> PROCESSING; succeeded -> settled; aborted or failed (by the
    runner, AbortJob or the lease sweeper) -> ABORTED or FAILED."""
    if job.type != JOB_TYPE or job.state not in (Job.RUNNING, Job.SUCCEEDED, Job.ABORTED, Job.FAILED):
        return
    upload_id = job.metadata.get(UPLOAD_KEY)
    if not upload_id:
        return
    try:
        upload = load_upload(tx.db, tx.project, upload_id)
    except ServiceError:
        return
    if upload.job_id != job.id or upload.state in TERMINAL:
        return
    if job.state == Job.RUNNING:  # leased (by the runner, or an external engine)
        if upload.state == BulkUpload.QUEUED:
            upload.state = BulkUpload.PROCESSING
            _save(tx, upload)
        return
    if job.state == Job.SUCCEEDED:  # finish_run refines this for the runner's own uploads
        if upload.state == BulkUpload.PROCESSING:
            settle(tx, upload)
            _save(tx, upload)
        return
    if job.state == Job.ABORTED:
        _end(tx, upload, BulkUpload.ABORTED)
        if not upload.HasField("error"):
            upload.error.CopyFrom(status_pb2.Status(
                code=code_pb2.ABORTED, message="aborted" + (f": {job.abort_reason}" if job.abort_reason else "")))
    else:
        _end(tx, upload, BulkUpload.FAILED)
        upload.error.CopyFrom(status_pb2.Status(
            code=job.error.code or code_pb2.UNKNOWN,
            message=payloads.cut(f"the {JOB_TYPE} job {job.id} failed: {job.error.message}", 1024)))
    _save(tx, upload)


# -- abort and re-run --------------------------------------------------------------------


def abort_upload(tx: WriteTx, req: bsvc.AbortBulkUploadRequest) -> BulkUpload:
    upload = load_upload(tx.db, tx.project, req.id)
    if upload.state in TERMINAL:
        raise wrong_state(upload, "abort", "BULK_UPLOAD_FINISHED", "nothing is left to abort")
    reason = req.reason or "bulk upload aborted"
    if upload.state == BulkUpload.UPLOADING:
        _end(tx, upload, BulkUpload.ABORTED)
        upload.error.CopyFrom(status_pb2.Status(code=code_pb2.ABORTED, message=f"aborted: {reason}"))
        _save(tx, upload)
        return upload
    if upload.state != BulkUpload.ABORTING:
        upload.state = BulkUpload.ABORTING
        upload.error.CopyFrom(status_pb2.Status(code=code_pb2.ABORTED, message=f"aborted: {reason}"))
        _save(tx, upload)
    if not req.keep_child_jobs:
        _abort_children(tx, upload.id, reason)
    if upload.job_id:
        try:
            job = store_jobs.abort_job(tx, upload.job_id, reason, False)  # PENDING -> ABORTED: the hook ends it
        except ServiceError:
            job = None  # finished (WAITING_FOR_OBJECTS): nothing runs
        if job is not None and job.state == Job.ABORTING:
            return load_upload(tx.db, tx.project, upload.id)  # the runner ends it at its next batch
    upload = load_upload(tx.db, tx.project, upload.id)
    if upload.state not in TERMINAL:
        _end(tx, upload, BulkUpload.ABORTED)
        _save(tx, upload)
    return upload


def _abort_children(tx: WriteTx, upload_id: str, reason: str) -> None:
    """Abort the unfinished processing jobs of the entries the upload's
    records left in progress."""
    p = tx.db.param
    rows = tx.db.execute_sql(f"SELECT object_id FROM bulk_upload_objects WHERE upload_id = {p} AND project = {p}",
                             (upload_id, tx.project)).fetchall()
    for (entry_id,) in rows:
        try:
            entry = store_entries.load_entry(tx.db, tx.project, entry_id)
        except ServiceError:
            continue
        for job_id in entry.job_ids:
            try:
                job = store_jobs.get_job(tx.db, tx.project, job_id)
                if job.state not in store_jobs.TERMINAL and job.state != Job.ABORTING:
                    store_jobs.abort_job(tx, job_id, reason, False)
            except ServiceError:
                continue


RERUN_SELECTIONS = {
    bsvc.RerunBulkUploadRequest.FAILED: frozenset({Result.ERROR}),
    bsvc.RerunBulkUploadRequest.NOT_PROCESSED: frozenset({Result.NOT_PROCESSED}),
    bsvc.RerunBulkUploadRequest.FAILED_AND_NOT_PROCESSED: frozenset({Result.ERROR, Result.NOT_PROCESSED}),
    bsvc.RerunBulkUploadRequest.ALL: frozenset({Result.OK, Result.ERROR, Result.NOT_PROCESSED}),
}


def rerun_upload(tx: WriteTx, req: bsvc.RerunBulkUploadRequest) -> BulkUpload:
    upload = load_upload(tx.db, tx.project, req.id)
    selection = req.selection or bsvc.RerunBulkUploadRequest.FAILED_AND_NOT_PROCESSED
    if upload.state not in TERMINAL or upload.state in (BulkUpload.EXPIRED,) or not upload.upload_complete_time.seconds:
        raise wrong_state(upload, "re-run", "BULK_UPLOAD_NOT_FINISHED",
                          "re-run an upload once it has ended (abort it first to stop it)")
    if selection == bsvc.RerunBulkUploadRequest.ALL and upload.state != BulkUpload.VALIDATED:
        raise invalid_argument([("selection", "ALL applies a VALIDATED upload; for other uploads re-run FAILED "
                                              "and/or NOT_PROCESSED records")])
    c = upload.counts
    todo = {bsvc.RerunBulkUploadRequest.FAILED: c.error, bsvc.RerunBulkUploadRequest.NOT_PROCESSED: c.not_processed,
            bsvc.RerunBulkUploadRequest.FAILED_AND_NOT_PROCESSED: c.error + c.not_processed,
            bsvc.RerunBulkUploadRequest.ALL: c.total_records}[selection]
    if todo == 0:
        raise wrong_state(upload, "re-run", "NOTHING_TO_RERUN", "no record has the selected status")
    upload.generation += 1
    if selection == bsvc.RerunBulkUploadRequest.ALL:
        upload.validate_only = False
        # Valid records were counted but have no row: they are applied as new.
        c.applied = c.error
        c.ok = 0
    upload.state = BulkUpload.QUEUED
    upload.ClearField("error")
    upload.ClearField("end_time")
    c.not_processed = 0
    _queue_job(tx, upload, int(selection))
    _save(tx, upload)
    return upload


def selection_of(value: int) -> frozenset[int] | None:
    return RERUN_SELECTIONS.get(value)  # type: ignore[call-overload, no-any-return]


store_jobs.STATE_HOOKS.append(on_job_state)
store_entries.ENTRY_HOOKS.append(on_entry_state)


REFRESH_STEP = 500


def refresh_results(tx: WriteTx, upload_id: str, after: int) -> int:
    """Kaltura `updateBulkUploadResults`: re-derive up to REFRESH_STEP
    IN_PROGRESS results (after record `after`) from their entries. Returns
    the last record index looked at, 0 when done."""
    load_upload(tx.db, tx.project, upload_id)
    rows = result_rows(tx.db, upload_id, after, REFRESH_STEP, [Result.IN_PROGRESS])
    for r in rows:
        if not r.object_id:
            continue
        try:
            entry = store_entries.load_entry(tx.db, tx.project, r.object_id)
        except ServiceError:
            entry = Entry(id=r.object_id, state=Entry.ERROR)
            entry.error.CopyFrom(status_pb2.Status(code=code_pb2.NOT_FOUND,
                                                   message=f"entry {r.object_id} was deleted"))
        on_entry_state(tx, entry)
    upload = load_upload(tx.db, tx.project, upload_id)
    if upload.state == BulkUpload.WAITING_FOR_OBJECTS:
        settle(tx, upload)
        _save(tx, upload)
    return rows[-1].record_index if len(rows) == REFRESH_STEP else 0


# Kaltura's result fields of the object types mediajobs does not create
# itself (KalturaBulkUploadResultUser, ...Category, ...CategoryUser /
# ...CategoryEntry, ...ScheduleResource): kept as reported.
EXTERNAL_FIELDS = frozenset({
    "userId", "screenName", "email", "dateOfBirth", "country", "state", "city", "zip", "gender", "firstName",
    "lastName", "group",
    "relativePath", "name", "appearInList", "privacy", "inheritanceType", "userJoinPolicy", "defaultPermissionLevel",
    "owner", "contributionPolicy", "partnerSortValue", "moderation",
    "categoryId", "categoryReferenceId", "permissionLevel", "updateMethod", "requiredObjectStatus",
    "resourceId", "type", "systemName", "parentType", "parentSystemName",
})
SSH_FIELDS = frozenset({"sshPrivateKey", "sshPublicKey", "sshKeyPassphrase"})
MAX_ADD_RESULTS = 1000


def add_results(tx: WriteTx, req: bsvc.AddBulkUploadResultsRequest) -> bsvc.AddBulkUploadResultsResponse:
    """Kaltura `batch.addBulkUploadResult`: upsert results reported by an
    external engine holding the upload's job lease; counts follow."""
    upload = load_upload(tx.db, tx.project, req.id)
    if not upload.job_id:
        raise wrong_state(upload, "add results to", "UPLOAD_NOT_COMPLETE", "finish writing the file first")
    _lease_check(tx, upload.job_id, req.lease_token)
    total = upload.counts.total_records
    for i, r in enumerate(req.results):
        if total and r.record_index > total:
            raise invalid_argument([(f"results[{i}].record_index",
                                     f"{r.record_index} is past the file's last record ({total})")])
    p = tx.db.param
    out = bsvc.AddBulkUploadResultsResponse()
    c = upload.counts
    for r in req.results:
        row = tx.db.execute_sql(f"SELECT data, generation FROM bulk_upload_lines WHERE upload_id = {p} "
                                f"AND record_index = {p}", (upload.id, r.record_index)).fetchone()
        stored = Result()
        stored.CopyFrom(r)
        stored.upload_id = upload.id
        if not stored.object_type:
            stored.object_type = upload.object_type or BulkUpload.ENTRY
        if row is None:
            stored.attempts = 1
            _put_result(tx, upload.id, stored, upload.generation, replace=False)
            c.applied += 1
        else:
            before = Result.FromString(bytes(row[0]))
            stored.attempts = before.attempts or 1
            stored.line_number = stored.line_number or before.line_number
            stored.byte_offset, stored.byte_length = before.byte_offset, before.byte_length
            _put_result(tx, upload.id, stored, upload.generation, replace=True)
            _counts_add(c, before.status, -1)
        _counts_add(c, stored.status, 1)
        out.results.append(stored)
    _save(tx, upload)
    out.bulk_upload.CopyFrom(upload)
    return out


# An upload still being written after this long without a write expires:
# its bytes go, and it no longer counts against the open uploads limit.
UPLOAD_IDLE_US = 24 * 3600 * 1_000_000
EXPIRE_STEP = 50


def expire_idle_uploads(tx: WriteTx, now_us: int) -> int:
    """UPLOADING uploads idle for UPLOAD_IDLE_US -> EXPIRED, chunks deleted,
    in every project (a bounded step; returns how many)."""
    p = tx.db.param
    rows = tx.db.execute_sql(f"SELECT id, project FROM bulk_uploads WHERE state = {p} AND update_time < {p} "
                             f"LIMIT {EXPIRE_STEP}", (BulkUpload.UPLOADING, now_us - UPLOAD_IDLE_US)
                             ).fetchall()
    for upload_id, project in rows:
        tx.project = project  # what follows (events, hooks) belongs to the upload's project
        upload = load_upload(tx.db, tx.project, upload_id)
        _delete_chunks(tx, upload_id)
        upload.uploaded_bytes = 0
        _end(tx, upload, BulkUpload.EXPIRED)
        upload.error.CopyFrom(status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED,
            message="nothing was written for 24 h: the upload expired and its bytes were removed; upload the file "
                    "again"))
        _save(tx, upload)
    return len(rows)
