"""BulkUploadService: CSV bulk uploads. Thin servicer: validate -> call the
store (store/bulk_uploads.py) or read the file (bulk/) -> shape the reply."""
from __future__ import annotations

import asyncio
import re
import zlib
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import grpc

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc as bsvc_grpc
from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from ..admission import Admission, unlimited
from ..bulk import csv_records
from ..bulk import files as bulk_files
from ..bulk import results as bulk_results
from ..principal import creator as principal_creator
from ..errors import ServiceError, UndecodableRequest, clip, handle_errors, invalid_argument
from ..store import Store
from ..store import bulk_uploads as store_bulk
from ..store import jobs as store_jobs
from ..store import templates as store_templates
from .jobs import _check_request_id, check_ulid

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
T = TypeVar("T")

SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
DELIMITERS = (",", ";", "\t", "|")
ENCODINGS = ("utf-8", "utf8", "windows-1252", "cp1252")
OUTPUT_ONLY = ("id", "number", "state", "uploaded_bytes", "csv_version", "columns", "counts", "job_id", "error",
               "warnings", "generation", "create_time", "upload_complete_time", "update_time", "end_time")
WATCH_INTERVAL_S = 0.25
DEFAULT_RESULTS_PAGE = 100


def validate_spec(u: BulkUpload, content: bytes) -> None:
    if u.format not in (BulkUpload.FORMAT_UNSPECIFIED, BulkUpload.CSV):
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "FORMAT_NOT_SUPPORTED",
                           f"bulk upload format {u.format} is not supported; only CSV is")
    v: list[tuple[str, str]] = []
    if u.object_type not in (BulkUpload.OBJECT_TYPE_UNSPECIFIED, BulkUpload.ENTRY):
        v.append(("bulk_upload.object_type", "only ENTRY records are supported"))
    for f in OUTPUT_ONLY:
        if f == "error":
            if u.HasField("error"):
                v.append(("bulk_upload.error", "output only; leave it empty"))
        elif f in ("counts", "create_time", "upload_complete_time", "update_time", "end_time"):
            if u.HasField(f):  # type: ignore[arg-type]
                v.append((f"bulk_upload.{f}", "output only; leave it empty"))
        elif getattr(u, f):
            v.append((f"bulk_upload.{f}", "output only; leave it empty"))
    if len(u.file_name) > 256:
        v.append(("bulk_upload.file_name", "at most 256 characters"))
    if len(u.uploaded_by) > 128:
        v.append(("bulk_upload.uploaded_by", "at most 128 characters"))
    if len(u.description) > 4096:
        v.append(("bulk_upload.description", "at most 4096 characters"))
    if u.template_id and not store_templates.ID_RE.match(u.template_id):
        v.append(("bulk_upload.template_id", f"{clip(u.template_id)} is not a template id (see ListJobTemplates)"))
    if u.priority not in res.Job.Priority.values():
        v.append(("bulk_upload.priority", f"unknown priority {u.priority}; use 1 (LOWEST) to 5 (HIGHEST)"))
    if u.csv.delimiter and u.csv.delimiter not in DELIMITERS:
        v.append(("bulk_upload.csv.delimiter", "use one of: ',' ';' tab '|'"))
    if u.csv.encoding and u.csv.encoding.lower() not in ENCODINGS:
        v.append(("bulk_upload.csv.encoding", "use utf-8 or windows-1252"))
    if u.csv.header not in BulkUpload.CsvOptions.Header.values():
        v.append(("bulk_upload.csv.header", f"unknown header mode {u.csv.header}"))
    if u.error_policy not in BulkUpload.ErrorPolicy.values():
        v.append(("bulk_upload.error_policy", f"unknown error policy {u.error_policy}"))
    if u.max_errors < 0:
        v.append(("bulk_upload.max_errors", "must not be negative (0 means no limit)"))
    if not 0 <= u.file_size_bytes <= store_bulk.MAX_FILE_BYTES:
        v.append(("bulk_upload.file_size_bytes",
                  f"must be 0 to {store_bulk.MAX_FILE_BYTES} (1 GiB, the file size limit); split larger files"))
    if u.sha256 and not SHA_RE.match(u.sha256):
        v.append(("bulk_upload.sha256", "64 hex digits (the file's sha256), or empty"))
    v += payloads.metadata_violations(u.labels, "bulk_upload.labels")
    if len(content) > store_bulk.MAX_INLINE_BYTES:
        v.append(("content", f"{len(content)} bytes; at most {store_bulk.MAX_INLINE_BYTES} (3 MiB) inline: "
                             "stream larger files with WriteBulkUploadFile"))
    if v:
        raise invalid_argument(v)


def validate_results(req: bsvc.AddBulkUploadResultsRequest) -> None:
    """What AddBulkUploadResults takes (Kaltura addBulkUploadResult fields)."""
    v: list[tuple[str, str]] = []
    if not req.lease_token:
        v.append(("lease_token", "required: the lease token of the upload's BULK_UPLOAD job (AcquireJobs)"))
    if not req.results:
        v.append(("results", "required: at least one result"))
    if len(req.results) > store_bulk.MAX_ADD_RESULTS:
        v.append(("results", f"at most {store_bulk.MAX_ADD_RESULTS} per call, got {len(req.results)}"))
    seen: set[int] = set()
    for i, r in enumerate(req.results[:store_bulk.MAX_ADD_RESULTS]):
        f = f"results[{i}]"
        if r.record_index < 1:
            v.append((f"{f}.record_index", "required: the record's 1-based index (Kaltura lineIndex)"))
        elif r.record_index in seen:
            v.append((f"{f}.record_index", f"record {r.record_index} appears twice in this call"))
        seen.add(r.record_index)
        if r.upload_id and r.upload_id.upper() != req.id:
            v.append((f"{f}.upload_id", "must be empty or this upload's id"))
        if r.status not in Result.Status.values() or r.status == 0:
            v.append((f"{f}.status", "required: ERROR, OK, IN_PROGRESS or NOT_PROCESSED"))
        if r.action not in Result.Action.values():
            v.append((f"{f}.action", f"unknown action {r.action}; use ADD 1, UPDATE 2, DELETE 3, REPLACE 4, "
                                     "ADD_OR_UPDATE 6"))
        if r.object_type not in BulkUpload.ObjectType.values():
            v.append((f"{f}.object_type", f"unknown object type {r.object_type}"))
        if r.error_type not in Result.ErrorType.values():
            v.append((f"{f}.error_type", f"unknown error type {r.error_type}"))
        for out in ("attempts", "byte_offset", "byte_length"):
            if getattr(r, out):
                v.append((f"{f}.{out}", "output only; leave it empty"))
        if r.HasField("update_time"):
            v.append((f"{f}.update_time", "output only; leave it empty"))
        for name in r.external_fields:
            if name in store_bulk.SSH_FIELDS:
                raise invalid_argument([(f"{f}.external_fields[{clip(name, 32)}]",
                                         "SSH key fields are not accepted: mediajobs keeps no key material")],
                                       reason="SSH_KEYS_NOT_ACCEPTED")
            if name not in store_bulk.EXTERNAL_FIELDS:
                v.append((f"{f}.external_fields[{clip(name, 32)}]",
                          "not a Kaltura user, category, category-user or schedule-resource result field"))
        v += payloads.metadata_violations(r.external_fields, f"{f}.external_fields")
        v += payloads.metadata_violations(r.plugins_data, f"{f}.plugins_data")
        if len(r.row_data) > 65536:
            v.append((f"{f}.row_data", "at most 64 KiB (a record's limit)"))
        if r.ByteSize() > 256 * 1024:
            v.append((f, f"{r.ByteSize()} bytes serialized; at most 256 KiB"))
        if r.HasField("error"):
            v += payloads.status_violations(r.error, f"{f}.error", payloads.MAX_ERROR_BYTES)
        if len(v) >= 20:
            break
    if v:
        raise invalid_argument(v)


def _base_name(name: str) -> str:
    return re.split(r"[\\/]", name)[-1]


class BulkUploadService(bsvc_grpc.BulkUploadServiceServicer):
    def __init__(self, store: Store, admission: Admission | None = None) -> None:
        self.store = store
        self.admission = admission or unlimited()

    async def _stream(self, make: Callable[[Any, str], Iterator[T]]) -> AsyncIterator[T]:
        """Items of a blocking generator, each produced in a read thread."""
        it = await self.store.read(make)
        while True:
            item = await self.store.read(lambda db, p: next(it, None))
            if item is None:
                return
            yield item

    # -- writing the file ----------------------------------------------------------

    @handle_errors
    async def StartBulkUpload(self, request: bsvc.StartBulkUploadRequest, context: grpc.aio.ServicerContext
                              ) -> BulkUpload:
        validate_spec(request.bulk_upload, request.content)
        _check_request_id(request.request_id)
        spec = request.bulk_upload
        spec.file_name = _base_name(spec.file_name)
        content = request.content
        summary: store_bulk.FileSummary | None = None
        if content:
            summary = await asyncio.to_thread(bulk_files.summarize, [content], [content], spec)
            bulk_files.check_size_and_sha(summary, spec, "")
        creator = principal_creator("anonymous")
        if creator != "anonymous":
            spec.uploaded_by = creator  # the authenticated key, not a free field

        def start(tx: Any) -> BulkUpload:
            upload = store_bulk.start_upload(tx, request, creator, self.store.quotas.open_bulk_uploads)
            if summary is None:
                return upload
            for off in range(0, len(content), 1024 * 1024):
                part = content[off:off + 1024 * 1024]
                store_bulk.append_chunk(tx, upload.id, off, part, zlib.crc32(part))
            return store_bulk.finish_upload(tx, upload.id, summary)

        return await self.store.write(lambda tx: store_jobs.idempotent(tx, "StartBulkUpload", request, BulkUpload,
                                                                          start))

    @handle_errors
    async def WriteBulkUploadFile(self, request_iterator: Any, context: grpc.aio.ServicerContext
                                  ) -> bsvc.WriteBulkUploadFileResponse:
        upload_id = ""
        offset = 0
        first = True
        running: bulk_files.RunningSummary | None = None
        try:
            async for msg in request_iterator:
                if type(msg) is UndecodableRequest:
                    raise msg.error
                if first:
                    check_ulid(msg.upload_id, "upload_id", "bulk upload")
                    upload_id = msg.upload_id.upper()
                    if msg.write_offset < 0:
                        raise invalid_argument([("write_offset", "must not be negative")])
                    offset = msg.write_offset
                    first = False
                    if offset == 0 and not msg.finish_write:
                        # The whole file comes through this stream: check it on the way.
                        upload = await self.store.read_point(store_bulk.load_upload, upload_id)
                        if upload.state == BulkUpload.UPLOADING and upload.uploaded_bytes == 0:
                            running = bulk_files.RunningSummary(upload)
                elif msg.upload_id and msg.upload_id.upper() != upload_id:
                    raise invalid_argument([("upload_id", "one stream writes one upload: set it in the first "
                                                          "message")])
                if len(msg.data) > store_bulk.MAX_WRITE_MESSAGE_BYTES:
                    raise invalid_argument([("data", f"{len(msg.data)} bytes in one message; at most "
                                                     f"{store_bulk.MAX_WRITE_MESSAGE_BYTES} (2 MiB; 1 MiB is a good "
                                                     "size)")])
                if msg.data:
                    crc = zlib.crc32(msg.data)
                    if crc != msg.crc32:
                        raise ServiceError(
                            grpc.StatusCode.DATA_LOSS, "CHUNK_CHECKSUM_MISMATCH",
                            f"the message at offset {offset} has crc32 {crc}, not the {msg.crc32} sent: it was "
                            f"not stored; resume with write_offset {offset}",
                            metadata={"bulk_upload_id": upload_id, "committed_size": str(offset)})
                    data, at = msg.data, offset
                    offset = await self.store.write(lambda tx: store_bulk.append_chunk(tx, upload_id, at, data, crc))
                    if running is not None:
                        await running.feed(data)
                if msg.finish_write:
                    upload = await self._finish(upload_id, offset, msg.sha256, running)
                    running = None
                    return bsvc.WriteBulkUploadFileResponse(committed_size=offset, bulk_upload=upload)
        finally:
            if running is not None:
                running.abandon()
        if first:
            raise invalid_argument([("upload_id", "the stream had no message; send {upload_id, write_offset} first")])
        upload = await self.store.read_point(store_bulk.load_upload, upload_id)
        return bsvc.WriteBulkUploadFileResponse(committed_size=upload.uploaded_bytes, bulk_upload=upload)

    async def _finish(self, upload_id: str, size: int, sha: str,
                      running: bulk_files.RunningSummary | None = None) -> BulkUpload:
        if sha and not SHA_RE.match(sha):
            raise invalid_argument([("sha256", "64 hex digits (the whole file's sha256), or empty")])
        upload = await self.store.read_point(store_bulk.load_upload, upload_id)
        if upload.state != BulkUpload.UPLOADING:
            return upload  # finished already (a retried finish)
        try:
            summary = await running.result() if running is not None else None
            if summary is None or summary.size != upload.uploaded_bytes:
                summary = await self.store.read(lambda db, p: bulk_files.summarize(
                    store_bulk.iter_file(db, p, upload_id), store_bulk.iter_file(db, p, upload_id), upload))
            bulk_files.check_size_and_sha(summary, upload, sha)
        except ServiceError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:  # the file is refused: the upload fails, bytes go
                await self.store.write(lambda tx: store_bulk.refuse_file(tx, upload_id, e))
            raise
        return await self.store.write(lambda tx: store_bulk.finish_upload(tx, upload_id, summary))

    @handle_errors
    async def QueryBulkUploadWriteStatus(self, request: bsvc.QueryBulkUploadWriteStatusRequest,
                                         context: grpc.aio.ServicerContext) -> bsvc.QueryBulkUploadWriteStatusResponse:
        check_ulid(request.upload_id, "upload_id", "bulk upload")
        return await self.store.read_point(store_bulk.write_status, request.upload_id.upper())

    # -- reading uploads -------------------------------------------------------------

    @handle_errors
    async def GetBulkUpload(self, request: bsvc.GetBulkUploadRequest, context: grpc.aio.ServicerContext
                            ) -> BulkUpload:
        check_ulid(request.id, "id", "bulk upload")
        return await self.store.read_point(store_bulk.load_upload, request.id.upper())

    @handle_errors
    async def ListBulkUploads(self, request: bsvc.ListBulkUploadsRequest, context: grpc.aio.ServicerContext
                              ) -> bsvc.ListBulkUploadsResponse:
        for i, s in enumerate(request.states):
            if s not in BulkUpload.State.values() or s == 0:
                raise invalid_argument([(f"states[{i}]", f"unknown bulk upload state {s}")])
        if len(request.uploaded_by) > 128:
            raise invalid_argument([("uploaded_by", "at most 128 characters")])
        return await self.store.read(store_bulk.list_uploads, request)

    @handle_errors
    async def WatchBulkUpload(self, request: bsvc.WatchBulkUploadRequest, context: grpc.aio.ServicerContext
                              ) -> AsyncIterator[BulkUpload]:
        check_ulid(request.id, "id", "bulk upload")
        upload_id = request.id.upper()
        self.admission.open_watch()
        try:
            last = b""
            while True:
                upload = await self.store.read_point(store_bulk.load_upload, upload_id)
                data = upload.SerializeToString(deterministic=True)
                if data != last:
                    last = data
                    yield upload
                if upload.state in store_bulk.TERMINAL:
                    return
                await asyncio.sleep(WATCH_INTERVAL_S)  # at most 4 messages a second
        finally:
            self.admission.close_watch()

    # -- abort, re-run ---------------------------------------------------------------

    @handle_errors
    async def AbortBulkUpload(self, request: bsvc.AbortBulkUploadRequest, context: grpc.aio.ServicerContext
                              ) -> BulkUpload:
        check_ulid(request.id, "id", "bulk upload")
        _check_request_id(request.request_id)
        if len(request.reason) > 1024:
            raise invalid_argument([("reason", "at most 1024 characters")])
        request.id = request.id.upper()
        return await self.store.write(lambda tx: store_jobs.idempotent(
            tx, "AbortBulkUpload", request, BulkUpload, lambda t: store_bulk.abort_upload(t, request)))

    @handle_errors
    async def RerunBulkUpload(self, request: bsvc.RerunBulkUploadRequest, context: grpc.aio.ServicerContext
                              ) -> BulkUpload:
        check_ulid(request.id, "id", "bulk upload")
        _check_request_id(request.request_id)
        if request.selection not in bsvc.RerunBulkUploadRequest.Selection.values():
            raise invalid_argument([("selection", f"unknown selection {request.selection}")])
        request.id = request.id.upper()
        return await self.store.write(lambda tx: store_jobs.idempotent(
            tx, "RerunBulkUpload", request, BulkUpload, lambda t: store_bulk.rerun_upload(t, request)))

    # -- the file, the log, results ------------------------------------------------------

    @handle_errors
    async def ReadBulkUploadFile(self, request: bsvc.ReadBulkUploadFileRequest, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[bsvc.ReadBulkUploadFileResponse]:
        check_ulid(request.id, "id", "bulk upload")
        if request.read_offset < 0 or request.read_limit < 0:
            raise invalid_argument([("read_offset" if request.read_offset < 0 else "read_limit", "must not be negative")])
        selection = request.selection or bsvc.ReadBulkUploadFileRequest.ORIGINAL
        if selection not in bsvc.ReadBulkUploadFileRequest.Selection.values():
            raise invalid_argument([("selection", f"unknown selection {request.selection}")])
        upload = await self.store.read_point(store_bulk.load_upload, request.id.upper())
        if upload.state in (BulkUpload.UPLOADING,) and selection == bsvc.ReadBulkUploadFileRequest.FAILED_RECORDS:
            raise store_bulk.wrong_state(upload, "list the failed records of", "UPLOAD_NOT_COMPLETE",
                                         "finish writing the file first")
        if upload.state == BulkUpload.EXPIRED or (upload.uploaded_bytes == 0 and upload.state == BulkUpload.FAILED
                                                 and upload.HasField("error")):
            raise store_bulk.wrong_state(upload, "read the file of", "FILE_PURGED",
                                         "a file refused as a whole is not kept: upload it again once fixed")
        if selection == bsvc.ReadBulkUploadFileRequest.ORIGINAL:
            end = request.read_offset + request.read_limit if request.read_limit else None

            def make(db: Any, p: str) -> Iterator[tuple[bytes, int]]:
                return bulk_results.messages(store_bulk.iter_file(db, p, upload.id, request.read_offset, end))
        else:
            def make(db: Any, p: str) -> Iterator[tuple[bytes, int]]:
                return bulk_results.messages(bulk_results.failed_records_file(db, p, upload))
        async for data, crc in self._stream(make):
            yield bsvc.ReadBulkUploadFileResponse(data=data, crc32=crc)

    @handle_errors
    async def ReadBulkUploadLog(self, request: bsvc.ReadBulkUploadLogRequest, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[bsvc.ReadBulkUploadLogResponse]:
        check_ulid(request.id, "id", "bulk upload")
        fmt = {0: "csv", bsvc.ReadBulkUploadLogRequest.CSV: "csv", bsvc.ReadBulkUploadLogRequest.JSONL: "jsonl"}.get(
            request.format)
        if fmt is None:
            raise invalid_argument([("format", f"unknown format {request.format}; use CSV or JSONL")])
        statuses = _statuses(request.statuses)
        upload = await self.store.read_point(store_bulk.load_upload, request.id.upper())
        if upload.state == BulkUpload.UPLOADING:
            raise store_bulk.wrong_state(upload, "read the log of", "UPLOAD_NOT_COMPLETE",
                                         "finish writing the file first")
        complete = upload.counts.applied >= upload.counts.total_records or upload.state in store_bulk.TERMINAL
        pending: bsvc.ReadBulkUploadLogResponse | None = None
        async for data, _crc in self._stream(
                lambda db, p: bulk_results.messages(bulk_results.log_lines(db, p, upload, fmt, statuses))):
            if pending is not None:
                yield pending
            pending = bsvc.ReadBulkUploadLogResponse(data=data)
        last = pending or bsvc.ReadBulkUploadLogResponse()
        last.complete = complete
        yield last

    @handle_errors
    async def ListBulkUploadResults(self, request: bsvc.ListBulkUploadResultsRequest,
                                    context: grpc.aio.ServicerContext) -> bsvc.ListBulkUploadResultsResponse:
        check_ulid(request.id, "id", "bulk upload")
        statuses = _statuses(request.statuses)
        if request.view not in bsvc.ListBulkUploadResultsRequest.View.values():
            raise invalid_argument([("view", f"unknown view {request.view}")])
        size = store_jobs.page_size(request.page_size, default=DEFAULT_RESULTS_PAGE)
        fp = store_jobs.list_fingerprint(request)
        after = 0
        start: csv_records.Position | None = None
        if request.page_token:
            token = store_jobs.decode_token(request.page_token, fp)
            after = int(token[0])
            if len(token) == 4:  # where the file scan stood (see ResultScan)
                start = csv_records.Position(int(token[1]), int(token[2]), int(token[3]))
        upload = await self.store.read_point(store_bulk.load_upload, request.id.upper())
        full = request.view == bsvc.ListBulkUploadResultsRequest.FULL

        def page(db: Any, p: str) -> bsvc.ListBulkUploadResultsResponse:
            out = bsvc.ListBulkUploadResultsResponse()
            got: list[Result] = []
            scan = bulk_results.ResultScan(db, p, upload, after, statuses, start)
            it = iter(scan)
            for r in it:
                got.append(r)
                if len(got) == size:
                    break
            position = scan.position
            if full:
                bulk_results.with_row_data(db, p, upload, got)
            budget = payloads.MessageBudget()
            for r in got:
                if not budget.admit(r.ByteSize()):
                    break
                out.results.append(r)
            more = len(out.results) < len(got) or (len(got) == size and next(it, None) is not None)
            if more and out.results:
                last = out.results[-1]
                if position is not None and len(out.results) == len(got):
                    token = [last.record_index, position.byte_offset, position.line_number, position.next_index]
                else:
                    token = [last.record_index]
                out.next_page_token = store_jobs.encode_token(token, fp)
            return out

        return await self.store.read(page)

    @handle_errors
    async def CountBulkUploadResults(self, request: bsvc.CountBulkUploadResultsRequest,
                                     context: grpc.aio.ServicerContext) -> bsvc.CountBulkUploadResultsResponse:
        check_ulid(request.id, "id", "bulk upload")
        if request.object_type not in (BulkUpload.OBJECT_TYPE_UNSPECIFIED, BulkUpload.ENTRY):
            raise invalid_argument([("object_type", "only ENTRY records exist")])
        return await self.store.read_point(store_bulk.count_results, request.id.upper())

    @handle_errors
    async def GetBulkUploadLastResult(self, request: bsvc.GetBulkUploadLastResultRequest,
                                      context: grpc.aio.ServicerContext) -> bsvc.GetBulkUploadLastResultResponse:
        check_ulid(request.id, "id", "bulk upload")
        return await self.store.read_point(store_bulk.last_result, request.id.upper())

    @handle_errors
    async def AddBulkUploadResults(self, request: bsvc.AddBulkUploadResultsRequest,
                                   context: grpc.aio.ServicerContext) -> bsvc.AddBulkUploadResultsResponse:
        check_ulid(request.id, "id", "bulk upload")
        request.id = request.id.upper()
        validate_results(request)
        return await self.store.write(lambda tx: store_bulk.add_results(tx, request))

    @handle_errors
    async def UpdateBulkUploadResults(self, request: bsvc.UpdateBulkUploadResultsRequest,
                                      context: grpc.aio.ServicerContext) -> bsvc.UpdateBulkUploadResultsResponse:
        check_ulid(request.id, "id", "bulk upload")
        upload_id = request.id.upper()
        after = 0
        while True:
            after = await self.store.write(lambda tx: store_bulk.refresh_results(tx, upload_id, after))
            if after == 0:
                break
        upload = await self.store.read_point(store_bulk.load_upload, upload_id)
        return bsvc.UpdateBulkUploadResultsResponse(open_count=upload.counts.in_progress, bulk_upload=upload)


def _statuses(values: Any) -> list[int]:
    out = []
    for i, s in enumerate(values):
        if s not in Result.Status.values() or s == 0:
            raise invalid_argument([(f"statuses[{i}]", f"unknown result status {s}; use OK, ERROR, IN_PROGRESS "
                                                       "or NOT_PROCESSED")])
        out.append(int(s))
    return out
