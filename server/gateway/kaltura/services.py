"""The Kaltura actions the seeds describe, each mapped onto RPCs of the public
gRPC API (the protos' comments name the Kaltura equivalents):

| wire service/action | RPCs |
|---|---|
| bulkupload, bulkupload_bulk: add | BulkUploadService.StartBulkUpload (+ WriteBulkUploadFile past 3 MiB) |
| ... get, list, abort | GetBulkUpload, ListBulkUploads, AbortBulkUpload |
| ... serve, serveLog | ReadBulkUploadFile, ReadBulkUploadLog (CSV), streamed as they come |
| batch: addBulkUploadResult, updateBulkUploadResults, countBulkUploadEntries, getBulkUploadLastResult | AddBulkUploadResults, UpdateBulkUploadResults, CountBulkUploadResults, GetBulkUploadLastResult |
| batch: addMediaInfo, checkEntryIsDone | MediaService.AddMediaInfo, CheckEntryIsDone |
| batch: checkFileExists, freeExclusiveJob, cleanExclusiveJobs | WorkerService.CheckFileExists, ReleaseJob (+ JobService.ListJobs for queueSize), CleanExpiredLeases |
| annotation_annotation, cuepoint_cuepoint: addFromBulk, serveBulk | MediaService.ImportCuePoints, ExportCuePoints |
| session: start | none (a KS signed with the partner's secret) |

Every handler takes the call (credentials, partner id, base URL) and the
decoded parameters, and returns what xml.envelope writes, or a raw
response (serve actions).
"""
from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf import timestamp_pb2

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import job_service_pb2 as jsvc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc

from ..upstream import Upstream
from . import convert
from . import ks as ks_mod
from .wire import KalturaError, Params, boolean, csv_list, integer, items, missing, number, text

log = logging.getLogger("mediajobs.gateway.kaltura")

BulkUpload = bres.BulkUpload
CALL_TIMEOUT_S = 60.0
MAX_INLINE_BYTES = 3 * 1024 * 1024  # StartBulkUpload's inline limit; larger files are streamed
WRITE_CHUNK_BYTES = 1024 * 1024
MAX_CUE_POINT_XML_BYTES = 8 * 1024 * 1024
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_LISTED = 30, 500, 10_000  # Kaltura's pager defaults and limits
MAX_SCAN_PAGES = 100  # number -> id lookups read at most 100,000 uploads (newest first)
MAX_CUE_POINT_PAGES = 100


@dataclass
class Call:
    """One Kaltura request: who it runs as upstream and where it came in."""
    request: web.Request
    upstream: Upstream
    metadata: list[tuple[str, str]]
    partner_id: int
    base_url: str
    numbers: "UploadNumbers"

    async def rpc(self, service: str, method: str, req: Any) -> Any:
        return await getattr(self.upstream.stubs[service], method)(req, metadata=self.metadata,
                                                                   timeout=CALL_TIMEOUT_S)

    def stream(self, service: str, method: str, req: Any) -> Any:
        return getattr(self.upstream.stubs[service], method)(req, metadata=self.metadata, timeout=CALL_TIMEOUT_S)


class UploadNumbers:
    """Bulk upload number -> ULID, for the numbers seen lately. Numbers are
    global and never reused, so a cached pair is a fact; whether the caller
    may see the upload is still decided by the API on every call."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[int, str] = OrderedDict()

    def get(self, number: int) -> str | None:
        found = self._ids.get(number)
        if found is not None:
            self._ids.move_to_end(number)
        return found

    def put(self, number: int, upload_id: str) -> None:
        self._ids[number] = upload_id
        self._ids.move_to_end(number)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


def not_found(raw: str) -> KalturaError:
    return KalturaError("BULK_UPLOAD_NOT_FOUND", f'Bulk upload id "{raw[:40]}" not found')


async def find_upload(call: Call, value: Any, name: str) -> BulkUpload:
    """The upload a Kaltura id names: its number, or its ULID."""
    raw = (text(value, name, 64) or "").strip()
    if not raw:
        raise missing(name)
    if convert.ULID_RE.match(raw.upper()):
        return await _get_upload(call, raw.upper(), raw)
    if not re.fullmatch(r"\d{1,18}", raw):
        raise KalturaError("PROPERTY_VALIDATION_NUMERIC_VALUE", f'The property "{name}" must be numeric')
    wanted = int(raw)
    cached = call.numbers.get(wanted)
    if cached is not None:
        return await _get_upload(call, cached, raw)
    token = ""
    for _ in range(MAX_SCAN_PAGES):
        page = await call.rpc("BulkUploadService", "ListBulkUploads",
                              bsvc.ListBulkUploadsRequest(page_size=1000, page_token=token))
        for u in page.bulk_uploads:
            call.numbers.put(u.number, u.id)
            if u.number == wanted:
                return u
        # Newest first: numbers and ids both grow with creation, so once a
        # whole page is below the number it is not further on.
        if not page.bulk_uploads or max(u.number for u in page.bulk_uploads) < wanted or not page.next_page_token:
            break
        token = page.next_page_token
    raise not_found(raw)


async def _get_upload(call: Call, upload_id: str, raw: str) -> BulkUpload:
    try:
        return await call.rpc("BulkUploadService", "GetBulkUpload", bsvc.GetBulkUploadRequest(id=upload_id))
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise not_found(raw) from None
        raise


# -- bulkUpload --------------------------------------------------------------------------


def base_name(name: str) -> str:
    return re.split(r"[\\/]", name)[-1][:256]


async def bulk_add(call: Call, p: Params) -> Any:
    upload = p.file("csvFileData")
    bulk_type = text(p.raw("bulkUploadType"), "bulkUploadType", 64) or "bulkUploadCsv.CSV"
    if bulk_type != "bulkUploadCsv.CSV":
        raise KalturaError("INVALID_ENUM_VALUE", f'Invalid enumeration value "{bulk_type}" for parameter '
                                                 '"bulkUploadType": only bulkUploadCsv.CSV is supported')
    spec = BulkUpload(format=BulkUpload.CSV)
    profile = (text(p.raw("conversionProfileId"), "conversionProfileId", 64) or "").strip()
    if profile not in ("", "-1", "0"):  # -1 / 0: the default template
        spec.template_id = profile
    uploaded_by = text(p.raw("uploadedBy"), "uploadedBy", 128) or ""
    if uploaded_by:
        spec.uploaded_by = uploaded_by
        spec.labels[convert.UPLOADED_BY_LABEL] = uploaded_by  # kept when the server records the key instead
    spec.file_name = base_name(text(p.raw("fileName"), "fileName", 1024) or upload.filename)
    data = upload.data
    if len(data) <= MAX_INLINE_BYTES:
        made = await call.rpc("BulkUploadService", "StartBulkUpload",
                              bsvc.StartBulkUploadRequest(bulk_upload=spec, content=data))
        return convert.bulk_upload(made, call.base_url)
    spec.file_size_bytes = len(data)
    spec.sha256 = hashlib.sha256(data).hexdigest()
    made = await call.rpc("BulkUploadService", "StartBulkUpload", bsvc.StartBulkUploadRequest(bulk_upload=spec))

    async def chunks() -> AsyncIterator[bsvc.WriteBulkUploadFileRequest]:
        for off in range(0, len(data), WRITE_CHUNK_BYTES):
            part = data[off:off + WRITE_CHUNK_BYTES]
            msg = bsvc.WriteBulkUploadFileRequest(data=part, crc32=zlib.crc32(part))
            if off == 0:
                msg.upload_id, msg.write_offset = made.id, 0
            if off + WRITE_CHUNK_BYTES >= len(data):
                msg.finish_write, msg.sha256 = True, spec.sha256
            yield msg

    written = await call.upstream.stubs["BulkUploadService"].WriteBulkUploadFile(
        chunks(), metadata=call.metadata, timeout=CALL_TIMEOUT_S)
    return convert.bulk_upload(written.bulk_upload, call.base_url)


async def bulk_get(call: Call, p: Params) -> Any:
    return convert.bulk_upload(await find_upload(call, p.raw("id"), "id"), call.base_url)


async def bulk_abort(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("id"), "id")
    aborted = await call.rpc("BulkUploadService", "AbortBulkUpload",
                             bsvc.AbortBulkUploadRequest(id=upload.id, reason="Kaltura bulkUpload.abort"))
    return convert.bulk_upload(aborted, call.base_url)


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def pager_of(p: Params, max_size: int = MAX_PAGE_SIZE, max_listed: int = MAX_LISTED,
             default_size: int = DEFAULT_PAGE_SIZE) -> tuple[int, int]:
    """KalturaFilterPager: (page size, how many to skip)."""
    pager = p.obj("pager") or {}
    size = integer(pager.get("pageSize"), "pager:pageSize", -(2**31), 2**31) or default_size
    index = integer(pager.get("pageIndex"), "pager:pageIndex", -(2**31), 2**31) or 1
    size = min(max(size, 1), max_size)  # Kaltura clamps the size
    if index < 1:
        index = 1
    if index * size > max_listed:
        raise KalturaError("PROPERTY_VALIDATION_MAX_VALUE", f"pager: pageIndex x pageSize may be at most "
                                                            f"{max_listed}; narrow the filter instead")
    return size, (index - 1) * size


async def bulk_list(call: Call, p: Params) -> Any:
    f = p.obj("bulkUploadFilter") or p.obj("filter") or {}
    req = bsvc.ListBulkUploadsRequest()
    statuses: list[int] = []
    equal = integer(f.get("statusEqual"), "bulkUploadFilter:statusEqual", -100, 100)
    if equal is not None:
        statuses.append(equal)
    for s in csv_list(f.get("statusIn"), "bulkUploadFilter:statusIn", 32):
        statuses.append(integer(s, "bulkUploadFilter:statusIn", -100, 100) or 0)
    if statuses:
        states = sorted({state for s in statuses for state in convert.upload_states(s)})
    else:
        states = [s for s in BulkUpload.State.values() if s and s not in convert.HIDDEN_FROM_LIST]
    types = csv_list(f.get("bulkUploadObjectTypeIn"), "bulkUploadFilter:bulkUploadObjectTypeIn", 32)
    type_equal = text(f.get("bulkUploadObjectTypeEqual"), "bulkUploadFilter:bulkUploadObjectTypeEqual", 32)
    if type_equal:
        types.append(type_equal)
    order = text(f.get("orderBy"), "bulkUploadFilter:orderBy", 32) or ""
    if order not in ("", "-createdAt", "-id", "-uploadedOn"):
        raise KalturaError("INVALID_ENUM_VALUE", f'orderBy "{order}" is not supported: uploads are listed newest '
                                                 "first (-createdAt)")
    size, skip = pager_of(p)
    empty = {"objectType": "KalturaBulkUploadListResponse", "objects": [], "totalCount": 0}
    if not states or (types and str(BulkUpload.ENTRY) not in types):
        return empty  # a status or object type no upload has
    req.states.extend(states)  # type: ignore[arg-type]
    on = integer(f.get("uploadedOnEqual"), "bulkUploadFilter:uploadedOnEqual", 0, 2**40)
    start = integer(f.get("uploadedOnGreaterThanOrEqual"), "bulkUploadFilter:uploadedOnGreaterThanOrEqual", 0, 2**40)
    end = integer(f.get("uploadedOnLessThanOrEqual"), "bulkUploadFilter:uploadedOnLessThanOrEqual", 0, 2**40)
    if on is not None:
        start, end = max(start or 0, on), min(end if end is not None else on, on)
    if start:
        req.create_time_from.CopyFrom(_timestamp(start))
    if end is not None:
        req.create_time_to.CopyFrom(_timestamp(end + 1))  # the API's bound is exclusive
    objects: list[dict[str, Any]] = []
    total, seen = 0, 0
    while True:
        req.page_size = min(1000, skip + size - seen)
        page = await call.rpc("BulkUploadService", "ListBulkUploads", req)
        total = page.total_size
        for u in page.bulk_uploads:
            call.numbers.put(u.number, u.id)
            if seen >= skip and len(objects) < size:
                objects.append(convert.bulk_upload(u, call.base_url))
            seen += 1
        if len(objects) >= size or not page.next_page_token:
            break
        req.page_token = page.next_page_token
    return {"objectType": "KalturaBulkUploadListResponse", "objects": objects, "totalCount": total}


async def send_stream(call: Call, rpc: Any, content_type: str, filename: str = "") -> web.StreamResponse:
    """A server-streaming read, sent as it comes. Errors before the first
    bytes (NOT_FOUND, ...) are still Kaltura XML; after them the connection
    is cut, the only way HTTP has to say the body is incomplete."""
    first = await rpc.read()  # raises the call's error
    headers = {"Content-Type": content_type}
    if filename:
        safe = re.sub(r'[^A-Za-z0-9._ -]', "_", filename)[:128]
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(call.request)
    msg = first
    try:
        while msg is not grpc.aio.EOF:
            await resp.write(msg.data)
            msg = await rpc.read()
    except grpc.aio.AioRpcError as e:
        log.warning("%s: the stream broke after the first bytes: %s", call.request.path[:200], e.details())
        resp.force_close()
        return resp
    await resp.write_eof()
    return resp


async def bulk_serve(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("id"), "id")
    rpc = call.stream("BulkUploadService", "ReadBulkUploadFile", bsvc.ReadBulkUploadFileRequest(id=upload.id))
    return await send_stream(call, rpc, "text/plain; charset=utf-8", upload.file_name or f"bulk-{upload.number}.csv")


async def bulk_serve_log(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("id"), "id")
    rpc = call.stream("BulkUploadService", "ReadBulkUploadLog",
                      bsvc.ReadBulkUploadLogRequest(id=upload.id, format=bsvc.ReadBulkUploadLogRequest.CSV))
    return await send_stream(call, rpc, "text/plain; charset=utf-8", f"bulk-{upload.number}-log.csv")


# -- batch: bulk upload results ------------------------------------------------------------


def _lease_token(p: Params) -> str:
    token = text(p.raw("leaseToken"), "leaseToken", 256)
    if not token:
        raise KalturaError("MISSING_MANDATORY_PARAMETER",
                           'Missing parameter "leaseToken": the lease token of the job (WorkerService.AcquireJobs); '
                           "mediajobs fences workers by lease token, not by lock key")
    return token


async def batch_add_bulk_upload_result(call: Call, p: Params) -> Any:
    obj = p.obj("bulkUploadResult", required=True)
    assert obj is not None
    upload = await find_upload(call, obj.get("bulkUploadJobId"), "bulkUploadResult:bulkUploadJobId")
    token = _lease_token(p)
    result, dropped = convert.result_from_kaltura(obj, items(p.raw("pluginDataArray"), "pluginDataArray", 64))
    if dropped:
        log.warning("batch.addBulkUploadResult: dropped %s of record %d of bulk upload %d (mediajobs keeps no key "
                    "material)", ", ".join(dropped), result.record_index, upload.number)
    out = await call.rpc("BulkUploadService", "AddBulkUploadResults",
                         bsvc.AddBulkUploadResultsRequest(id=upload.id, lease_token=token, results=[result]))
    return convert.bulk_result(out.results[0], out.bulk_upload.number or upload.number, call.partner_id)


async def batch_update_bulk_upload_results(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("bulkUploadJobId"), "bulkUploadJobId")
    out = await call.rpc("BulkUploadService", "UpdateBulkUploadResults",
                         bsvc.UpdateBulkUploadResultsRequest(id=upload.id))
    return int(out.open_count)


async def batch_count_bulk_upload_entries(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("bulkUploadJobId"), "bulkUploadJobId")
    object_type = integer(p.raw("bulkUploadObjectType"), "bulkUploadObjectType", 0, 100) or BulkUpload.ENTRY
    if object_type != BulkUpload.ENTRY:  # mediajobs' records only make entries
        created, errors = 0, 0
    else:
        out = await call.rpc("BulkUploadService", "CountBulkUploadResults",
                             bsvc.CountBulkUploadResultsRequest(id=upload.id, object_type=BulkUpload.ENTRY))
        created, errors = out.created, out.error
    return [{"objectType": "KalturaKeyValue", "key": "created", "value": str(created)},
            {"objectType": "KalturaKeyValue", "key": "error", "value": str(errors)}]


async def batch_get_bulk_upload_last_result(call: Call, p: Params) -> Any:
    upload = await find_upload(call, p.raw("bulkUploadJobId"), "bulkUploadJobId")
    out = await call.rpc("BulkUploadService", "GetBulkUploadLastResult",
                         bsvc.GetBulkUploadLastResultRequest(id=upload.id))
    return convert.bulk_result(out.result, upload.number, call.partner_id) if out.HasField("result") else None


# -- batch: media, files, exclusive jobs ---------------------------------------------------


async def batch_add_media_info(call: Call, p: Params) -> Any:
    obj = p.obj("mediaInfo", required=True)
    assert obj is not None
    made = await call.rpc("MediaService", "AddMediaInfo",
                          msvc.AddMediaInfoRequest(media_info=convert.media_info_from_kaltura(obj)))
    return convert.media_info(made)


async def batch_check_entry_is_done(call: Call, p: Params) -> Any:
    job_id = convert.as_ulid(p.raw("batchJobId"), "batchJobId", "INVALID_BATCHJOB_ID")
    out = await call.rpc("MediaService", "CheckEntryIsDone", msvc.CheckEntryIsDoneRequest(job_id=job_id))
    return bool(out.done)


async def batch_check_file_exists(call: Call, p: Params) -> Any:
    path = text(p.raw("localPath"), "localPath", 4096)
    if not path:
        raise missing("localPath")
    size = number(p.raw("size"), "size")
    req = wsvc.CheckFileExistsRequest(local_path=path)
    if size is None or size < 0:
        req.any_size = True
    else:
        req.size = int(size)
    out = await call.rpc("WorkerService", "CheckFileExists", req)
    return {"objectType": "KalturaFileExistsResponse", "exists": bool(out.exists), "sizeOk": bool(out.size_matches)}


async def batch_free_exclusive_job(call: Call, p: Params) -> Any:
    job_id = convert.as_ulid(p.raw("id"), "id", "INVALID_BATCHJOB_ID")
    token = _lease_token(p)
    p.obj("lockKey")  # accepted (KalturaExclusiveLockKey); the lease token is the fence
    job_type = text(p.raw("jobType"), "jobType", 64) or ""
    reset = boolean(p.raw("resetExecutionAttempts"), "resetExecutionAttempts") or False
    job = await call.rpc("WorkerService", "ReleaseJob", wsvc.ReleaseJobRequest(
        job_id=job_id, lease_token=token, job_type=convert.job_type_from_kaltura(job_type) if job_type else "",
        reset_execution_attempts=reset))
    queue_size: int | None = None
    try:
        pending = await call.rpc("JobService", "ListJobs", jsvc.ListJobsRequest(
            states=[res.Job.PENDING], types=[job.type], page_size=1))
        queue_size = int(pending.total_size)
    except grpc.aio.AioRpcError as e:  # a worker key may not list jobs: leave the size out
        if e.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
    return {"objectType": "KalturaFreeJobResponse", "job": convert.batch_job(job, call.partner_id),
            "jobType": convert.kaltura_job_type(job.type), "queueSize": queue_size}


async def batch_clean_exclusive_jobs(call: Call, p: Params) -> Any:
    out = await call.rpc("WorkerService", "CleanExpiredLeases", wsvc.CleanExpiredLeasesRequest())
    return len(out.retried_job_ids) + len(out.failed_job_ids) + len(out.aborted_job_ids)


# -- cue points ----------------------------------------------------------------------------


async def cue_points_add_from_bulk(call: Call, p: Params) -> Any:
    upload = p.file("fileData")
    if len(upload.data) > MAX_CUE_POINT_XML_BYTES:
        raise KalturaError("MAX_FILE_SIZE_EXCEEDED", f"fileData: at most {MAX_CUE_POINT_XML_BYTES} bytes of XML")
    out = await call.rpc("MediaService", "ImportCuePoints", msvc.ImportCuePointsRequest(xml=upload.data))
    if out.errors:
        # Kaltura's reply has no room for per-item errors: say what was
        # created and what was refused, so nothing is imported twice.
        refused = "; ".join(f"item {e.index} (line {e.line}{', entry ' + e.entry_id if e.entry_id else ''}): "
                            f"{e.message}" for e in out.errors[:10])
        more = f"; and {len(out.errors) - 10} more" if len(out.errors) > 10 else ""
        created = ", ".join(c.id for c in out.cue_points[:20]) + (" ..." if len(out.cue_points) > 20 else "")
        raise KalturaError("CUE_POINTS_NOT_ALL_IMPORTED",
                           f"{len(out.errors)} cue point(s) refused: {refused}{more}. "
                           f"{len(out.cue_points)} created{': ' + created if created else ''}")
    return {"objectType": "KalturaCuePointListResponse",
            "objects": [convert.cue_point(c, call.partner_id) for c in out.cue_points],
            "totalCount": len(out.cue_points)}


# The filter fields serveBulk honours; any other set field is refused rather
# than silently widening the export.
_CUE_POINT_FILTER_FIELDS = {"objectType", "entryIdEqual", "entryIdIn", "cuePointTypeEqual", "cuePointTypeIn",
                            "startTimeGreaterThanOrEqual", "startTimeLessThanOrEqual", "tagsLike",
                            "tagsMultiLikeOr", "orderBy", "statusEqual", "statusIn"}


EMPTY_SCENES = b'<?xml version="1.0" encoding="UTF-8"?>\n<scenes/>\n'


def cue_point_export(f: dict[str, Any], default_types: list[int]) -> msvc.ExportCuePointsRequest | None:
    """The export a KalturaCuePointFilter asks for (None: nothing can match)."""
    unknown = sorted(k for k, v in f.items() if k not in _CUE_POINT_FILTER_FIELDS and v not in (None, "", {}))
    if unknown:
        raise KalturaError("FILTER_NOT_SUPPORTED", f"filter fields not supported here: {', '.join(unknown[:10])}; "
                                                   f"supported: {', '.join(sorted(_CUE_POINT_FILTER_FIELDS))}")
    status = [s for s in [text(f.get("statusEqual"), "filter:statusEqual", 8)]
              + csv_list(f.get("statusIn"), "filter:statusIn", 8) if s]
    if status and "1" not in status:
        return None  # mediajobs' cue points are all READY (1)
    req = msvc.ExportCuePointsRequest()
    entry = text(f.get("entryIdEqual"), "filter:entryIdEqual", 64)
    req.entry_ids.extend(([entry] if entry else []) + csv_list(f.get("entryIdIn"), "filter:entryIdIn", 500))
    types = [t for t in [text(f.get("cuePointTypeEqual"), "filter:cuePointTypeEqual", 64)]
             + csv_list(f.get("cuePointTypeIn"), "filter:cuePointTypeIn", 16) if t]
    for t in types:
        if t not in convert.CUE_POINT_TYPE_IN:
            raise KalturaError("INVALID_ENUM_VALUE", f'Invalid enumeration value "{t[:40]}" for parameter '
                                                     f'"filter:cuePointTypeEqual": use one of '
                                                     f"{', '.join(convert.CUE_POINT_TYPE_IN)}")
        req.types.append(convert.CUE_POINT_TYPE_IN[t])
    if not types:
        req.types.extend(default_types)  # type: ignore[arg-type]
    req.start_time_from_ms = integer(f.get("startTimeGreaterThanOrEqual"), "filter:startTimeGreaterThanOrEqual",
                                     0, 2**53) or 0
    req.start_time_to_ms = integer(f.get("startTimeLessThanOrEqual"), "filter:startTimeLessThanOrEqual",
                                   0, 2**53) or 0
    for name in ("tagsLike", "tagsMultiLikeOr"):
        req.tags.extend(csv_list(f.get(name), f"filter:{name}", 32))
    order = text(f.get("orderBy"), "filter:orderBy", 32) or ""
    if order not in ("", "+startTime"):
        raise KalturaError("INVALID_ENUM_VALUE", f'orderBy "{order}" is not supported: cue points are served by '
                                                 "entry, then +startTime")
    return req


def cue_points_serve_bulk(default_types: list[int]) -> Callable[[Call, Params], Awaitable[Any]]:
    async def serve(call: Call, p: Params) -> Any:
        req = cue_point_export(p.obj("filter") or {}, default_types)
        size, skip = pager_of(p, max_size=10_000, max_listed=MAX_CUE_POINT_PAGES * 10_000, default_size=500)
        xml_doc = EMPTY_SCENES
        if req is not None:
            req.page_size = size
            for _ in range(skip // size):  # walk to the page asked for
                page = await call.rpc("MediaService", "ExportCuePoints", req)
                if not page.next_page_token:
                    req = None
                    break
                req.page_token = page.next_page_token
        if req is not None:
            xml_doc = (await call.rpc("MediaService", "ExportCuePoints", req)).xml
        return web.Response(body=xml_doc, content_type="text/xml", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="cue-points.xml"'})
    return serve


# -- session -------------------------------------------------------------------------------


@dataclass
class Action:
    handler: Callable[[Call, Params], Awaitable[Any]]
    # Kaltura codes for the API's ErrorInfo reasons, where this action has its own.
    errors: dict[str, str] = field(default_factory=dict)
    # False: no KS needed (session.start).
    needs_session: bool = True


_ANNOTATIONS: list[int] = [mres.CuePoint.ANNOTATION]

_bulk = {
    "add": Action(bulk_add), "get": Action(bulk_get), "list": Action(bulk_list), "abort": Action(bulk_abort),
    "serve": Action(bulk_serve), "servelog": Action(bulk_serve_log),
}
_job_errors = {"JOB_NOT_FOUND": "INVALID_BATCHJOB_ID", "ENTRY_NOT_FOUND": "ENTRY_ID_NOT_FOUND",
               "JOB_HAS_NO_ENTRY": "ENTRY_ID_NOT_FOUND"}
SERVICES: dict[str, dict[str, Action]] = {
    "bulkupload": _bulk,
    "bulkupload_bulk": _bulk,
    "batch": {
        "addbulkuploadresult": Action(batch_add_bulk_upload_result),
        "updatebulkuploadresults": Action(batch_update_bulk_upload_results),
        "countbulkuploadentries": Action(batch_count_bulk_upload_entries),
        "getbulkuploadlastresult": Action(batch_get_bulk_upload_last_result),
        "addmediainfo": Action(batch_add_media_info, {"ENTRY_NOT_FOUND": "FLAVOR_ASSET_ID_NOT_FOUND",
                                                      "FLAVOR_ASSET_NOT_FOUND": "FLAVOR_ASSET_ID_NOT_FOUND"}),
        "checkentryisdone": Action(batch_check_entry_is_done, _job_errors),
        "checkfileexists": Action(batch_check_file_exists),
        "freeexclusivejob": Action(batch_free_exclusive_job, _job_errors),
        "cleanexclusivejobs": Action(batch_clean_exclusive_jobs),
    },
    "annotation_annotation": {
        "addfrombulk": Action(cue_points_add_from_bulk),
        "servebulk": Action(cue_points_serve_bulk(_ANNOTATIONS)),
    },
    "cuepoint_cuepoint": {
        "addfrombulk": Action(cue_points_add_from_bulk),
        "servebulk": Action(cue_points_serve_bulk([])),
    },
}


def session_start(partners: ks_mod.Partners | None) -> Action:
    async def start(call: Call, p: Params) -> Any:
        secret = text(p.raw("secret"), "secret", 1024)
        if not secret:
            raise missing("secret")
        partner_id = integer(p.raw("partnerId"), "partnerId", 1, 2**31 - 1)
        if partner_id is None:
            raise missing("partnerId")
        session_type = integer(p.raw("type"), "type", 0, 2)
        expiry = integer(p.raw("expiry"), "expiry", 1, 10 * 365 * 86400) or 86400
        user_id = text(p.raw("userId"), "userId", 128) or ""
        privileges = text(p.raw("privileges"), "privileges", 1024) or ""
        if ";" in user_id or ";" in privileges:
            raise KalturaError("INVALID_PARAMETER", "userId and privileges may not contain ';'")
        if partners is None:  # no partners file: KS are not checked, any KS does
            return ks_mod.generate("", partner_id, session_type or 0, user_id, expiry, privileges)
        return ks_mod.start_session(partners, secret, partner_id, session_type or 0, user_id, expiry, privileges)
    return Action(start, needs_session=False)
