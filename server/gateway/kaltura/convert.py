"""mediajobs resources <-> Kaltura objects: ids, enums and fields.

Ids. Kaltura's client reads some ids as integers (`getXmlNodeInt` turns
anything else into None without an error), so:

- a bulk upload is its `BulkUpload.number` (a dense numeric alias the API
  keeps for this); a number is turned back into the upload's ULID by
  listing the caller's uploads newest first (the gateway keeps no store, only
  a bounded number -> id cache, and every use still goes through the API
  with the caller's key). Its ULID is accepted as well;
- a result's `id` is `number * 10**7 + lineIndex` (at most 5,000,000 records
  per file), its `bulkUploadJobId` the upload's number;
- a batch job (`KalturaBatchJob.id`, `batchJobId`) and a media info
  (`KalturaMediaInfo.id`) are their ULID read as a 128-bit integer (up to 39
  digits; Python's int() takes it). The ULID text is accepted as well;
- entries and cue points keep their ULIDs (Kaltura's are strings);
- a flavor asset (`KalturaMediaInfo.flavorAssetId`) is `<entry id>` for the
  entry's source, or `<entry id>_<flavor asset id>` (mediajobs' flavor
  assets belong to an entry; the entry must be known to add media info);
- `conversionProfileId` is a job template id (`-1` or `0`: the default).

States: BulkUpload.State -> KalturaBatchJobStatus, Job.State ->
KalturaBatchJobStatus, Entry.State -> KalturaEntryStatus, as the protos'
vocabulary comments say.
"""
from __future__ import annotations

import re
from typing import Any

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from .wire import KalturaError, boolean, integer, items, number, text

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
Job = res.Job

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
MAX_RECORDS = 10**7  # a result id is number * MAX_RECORDS + lineIndex
UPLOADED_BY_LABEL = "kaltura.uploaded_by"


# -- ids ---------------------------------------------------------------------------------


def ulid_to_int(ulid: str) -> int:
    out = 0
    for c in ulid.upper():
        out = out * 32 + _ALPHABET.index(c)
    return out


def int_to_ulid(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def as_ulid(value: Any, name: str, code: str) -> str:
    """An id sent as a ULID or as its integer form (`code`: Kaltura's error
    for a value that is neither)."""
    raw = text(value, name, 64)
    if raw is None or raw == "":
        raise KalturaError("MISSING_MANDATORY_PARAMETER", f'Missing parameter "{name}"')
    raw = raw.strip()
    if ULID_RE.match(raw.upper()):
        return raw.upper()
    if re.fullmatch(r"\d{1,40}", raw) and 0 < int(raw) < 2**128:
        return int_to_ulid(int(raw))
    raise KalturaError(code, f'"{raw[:40]}" is not a valid {name}: use the id this gateway returned')


def flavor_asset_ref(entry_id: str, flavor_asset_id: str) -> str:
    return f"{entry_id}_{flavor_asset_id}" if flavor_asset_id else entry_id


def split_flavor_asset_ref(value: str) -> tuple[str, str]:
    entry, _, flavor = value.partition("_")
    for part in (entry, flavor):
        if part and not ULID_RE.match(part.upper()):
            raise KalturaError("FLAVOR_ASSET_ID_NOT_FOUND",
                               f'Flavor asset id "{value[:60]}" not found: use "<entry id>" for the source or '
                               '"<entry id>_<flavor asset id>"')
    return entry.upper(), flavor.upper()


# -- enums -------------------------------------------------------------------------------

BATCH_PENDING, BATCH_QUEUED, BATCH_PROCESSING, BATCH_FINISHED, BATCH_FAILED, BATCH_ABORTED = 0, 1, 2, 5, 6, 7
BATCH_ALMOST_DONE, BATCH_FATAL, BATCH_FINISHED_PARTIALLY = 8, 10, 12

UPLOAD_STATUS = {
    BulkUpload.UPLOADING: BATCH_PENDING, BulkUpload.QUEUED: BATCH_QUEUED, BulkUpload.PROCESSING: BATCH_PROCESSING,
    BulkUpload.WAITING_FOR_OBJECTS: BATCH_ALMOST_DONE, BulkUpload.ABORTING: BATCH_ABORTED,
    BulkUpload.SUCCEEDED: BATCH_FINISHED, BulkUpload.VALIDATED: BATCH_FINISHED,
    BulkUpload.PARTIALLY_SUCCEEDED: BATCH_FINISHED_PARTIALLY, BulkUpload.FAILED: BATCH_FAILED,
    BulkUpload.ABORTED: BATCH_ABORTED, BulkUpload.EXPIRED: BATCH_FATAL,
}
HIDDEN_FROM_LIST = (BulkUpload.ABORTING, BulkUpload.ABORTED)  # Kaltura's list leaves aborted uploads out


def upload_states(status: int) -> list[int]:
    """The upload states a KalturaBatchJobStatus stands for (none for the
    statuses an upload never has)."""
    return [s for s, k in UPLOAD_STATUS.items() if k == status]


JOB_STATUS = {Job.PENDING: BATCH_PENDING, Job.RUNNING: BATCH_PROCESSING, Job.ABORTING: BATCH_PROCESSING,
              Job.SUCCEEDED: BATCH_FINISHED, Job.FAILED: BATCH_FAILED, Job.ABORTED: BATCH_ABORTED}

# KalturaBatchJobType <-> mediajobs job types (the rest pass through by name).
JOB_TYPES = {"0": "TRANSCODE", "1": "IMPORT", "4": "BULK_UPLOAD", "14": "EXTRACT_MEDIA", "23": "EXPORT",
             "30": "THUMBNAIL", "35": "CONCAT"}
KALTURA_JOB_TYPE = {v: k for k, v in JOB_TYPES.items()}

# KalturaEntryStatus <-> Entry.State names.
ENTRY_STATUS = {"PENDING": 4, "PROCESSING": 1, "READY": 2, "ERROR": -1, "DELETED": 3}
ENTRY_STATE = {4: "PENDING", 0: "PENDING", 7: "PENDING", 1: "PROCESSING", 2: "READY", -1: "ERROR", -2: "ERROR",
               3: "DELETED"}

RESULT_STATUS = {Result.ERROR: "1", Result.OK: "2", Result.IN_PROGRESS: "3", Result.NOT_PROCESSED: "1"}
RESULT_STATUS_IN = {"1": Result.ERROR, "2": Result.OK, "3": Result.IN_PROGRESS, "4": Result.NOT_PROCESSED}
ERROR_TYPE = {Result.VALIDATION: 0, Result.OBJECT: 4, Result.INTERNAL: 1}  # KalturaBatchJobErrorTypes
ERROR_TYPE_IN = {0: Result.VALIDATION, 4: Result.OBJECT, 1: Result.INTERNAL, 2: Result.INTERNAL,
                 3: Result.INTERNAL, 5: Result.INTERNAL}

CUE_POINT_TYPES = {  # CuePoint.Type -> (Kaltura class, KalturaCuePointType)
    mres.CuePoint.ANNOTATION: ("KalturaAnnotation", "annotation.Annotation"),
    mres.CuePoint.AD: ("KalturaAdCuePoint", "adCuePoint.Ad"),
    mres.CuePoint.CODE: ("KalturaCodeCuePoint", "codeCuePoint.Code"),
    mres.CuePoint.THUMB: ("KalturaThumbCuePoint", "thumbCuePoint.Thumb"),
    mres.CuePoint.EVENT: ("KalturaEventCuePoint", "eventCuePoint.Event"),
}
CUE_POINT_TYPE_IN = {k: t for t, (_cls, k) in CUE_POINT_TYPES.items()}
AD_TYPES = {"VIDEO": "1", "OVERLAY": "2"}
THUMB_SUB_TYPES = {"SLIDE": 1, "CHAPTER": 2}
EVENT_TYPES = {"BROADCAST_START": "1", "BROADCAST_END": "2"}


def _seconds(ts: Any) -> int | None:
    return int(ts.seconds) if ts.seconds else None


def _or_none(value: Any) -> Any:
    return value if value not in ("", 0, None) else None


# -- bulk uploads ------------------------------------------------------------------------


def serve_url(base: str, service: str, action: str, number: int) -> str:
    """A serve URL without credentials (add `&ks=...`): a KS in a URL ends up in logs."""
    return f"{base}/api_v3/service/{service}/action/{action}?id={number}"


def bulk_upload(u: BulkUpload, base: str) -> dict[str, Any]:
    error = u.error.message if u.HasField("error") else ""
    return {
        "objectType": "KalturaBulkUpload",
        "id": u.number,
        "uploadedBy": u.labels.get(UPLOADED_BY_LABEL) or u.uploaded_by,
        "uploadedByUserId": u.uploaded_by,
        "uploadedOn": _seconds(u.create_time),
        "numOfEntries": u.counts.objects_created,
        "status": UPLOAD_STATUS.get(u.state, BATCH_PENDING),
        "logFileUrl": serve_url(base, "bulkupload_bulk", "serveLog", u.number),
        "csvFileUrl": serve_url(base, "bulkupload_bulk", "serve", u.number),
        "bulkFileUrl": serve_url(base, "bulkupload_bulk", "serve", u.number),
        "bulkUploadType": "bulkUploadCsv.CSV",
        "error": error or None,
        "errorType": ERROR_TYPE[Result.VALIDATION] if error else None,
        "fileName": u.file_name or None,
        "description": u.description or None,
        "numOfObjects": u.counts.total_records,
        "bulkUploadObjectType": str(u.object_type or BulkUpload.ENTRY),
    }


def reason_of(st: Any) -> str:
    """The ErrorInfo reason of a google.rpc.Status ("" when it has none)."""
    from ..errors import details_of

    return details_of(st).reason


def bulk_result(r: Result, number: int, partner_id: int) -> dict[str, Any]:
    error = r.error.message if r.HasField("error") else ""
    if r.status == Result.NOT_PROCESSED and not error:
        error = "not processed (the upload stopped before this record)"
    cls = r.kaltura_object_type or ("KalturaBulkUploadResultEntry" if r.object_type in (0, BulkUpload.ENTRY)
                                    else "KalturaBulkUploadResult")
    out: dict[str, Any] = {
        "objectType": cls,
        "id": number * MAX_RECORDS + r.record_index,
        "bulkUploadJobId": number,
        "lineIndex": r.record_index,
        "partnerId": partner_id,
        "status": RESULT_STATUS.get(r.status, "1"),
        "action": str(r.action or Result.ADD),
        "objectId": r.object_id or None,
        "objectStatus": ENTRY_STATUS.get(r.object_state),
        "bulkUploadResultObjectType": str(r.object_type or BulkUpload.ENTRY),
        "rowData": r.row_data or None,
        "partnerData": r.partner_data or None,
        "objectErrorDescription": r.object_error or None,
        "pluginsData": [{"objectType": "KalturaBulkUploadPluginData", "field": k, "value": v}
                        for k, v in sorted(r.plugins_data.items())] or None,
        "errorDescription": error or None,
        "errorCode": (reason_of(r.error) if r.HasField("error") else "") or None,
        "errorType": ERROR_TYPE.get(r.error_type) if r.error_type else None,
    }
    if cls == "KalturaBulkUploadResultEntry":
        e = r.entry
        out.update({
            "entryId": e.entry_id or r.object_id or None, "title": r.title or e.title or None,
            "description": e.description or None, "tags": e.tags or None, "url": e.url or None,
            "contentType": e.content_type or None, "conversionProfileId": e.conversion_profile_id or None,
            "accessControlProfileId": e.access_control_profile_id or None, "category": e.category or None,
            "scheduleStartDate": e.schedule_start_date or None, "scheduleEndDate": e.schedule_end_date or None,
            "entryStatus": ENTRY_STATUS.get(e.entry_status or r.object_state),
            "thumbnailUrl": e.thumbnail_url or None, "thumbnailSaved": e.thumbnail_saved or None,
            "creatorId": e.creator_id or None, "entitledUsersEdit": e.entitled_users_edit or None,
            "entitledUsersPublish": e.entitled_users_publish or None, "ownerId": e.owner_id or None,
            "referenceId": r.reference_id or e.reference_id or None, "templateEntryId": e.template_entry_id or None,
        })
    for k, v in sorted(r.external_fields.items()):
        out[k] = v
    return out


# The fields of KalturaBulkUploadResultEntry, and what they become.
_ENTRY_FIELDS = {
    "entryId": "entry_id", "title": "title", "description": "description", "tags": "tags", "url": "url",
    "contentType": "content_type", "conversionProfileId": "conversion_profile_id",
    "accessControlProfileId": "access_control_profile_id", "category": "category",
    "scheduleStartDate": "schedule_start_date", "scheduleEndDate": "schedule_end_date",
    "entryStatus": "entry_status", "thumbnailUrl": "thumbnail_url", "creatorId": "creator_id",
    "entitledUsersEdit": "entitled_users_edit", "entitledUsersPublish": "entitled_users_publish",
    "ownerId": "owner_id", "referenceId": "reference_id", "templateEntryId": "template_entry_id",
}
SSH_FIELDS = ("sshPrivateKey", "sshPublicKey", "sshKeyPassphrase")
_COMMON_RESULT_FIELDS = {"objectType", "id", "bulkUploadJobId", "lineIndex", "partnerId", "status", "action",
                         "objectId", "objectStatus", "bulkUploadResultObjectType", "rowData", "partnerData",
                         "objectErrorDescription", "pluginsData", "errorDescription", "errorCode", "errorType",
                         "entitledUsersView", "thumbnailSaved", *SSH_FIELDS}


def result_from_kaltura(obj: dict[str, Any], plugin_data: list[Any]) -> tuple[Result, list[str]]:
    """A KalturaBulkUploadResult[...] parameter as a BulkUploadResult; also
    the names of fields dropped (SSH keys: mediajobs keeps no key material)."""
    cls = text(obj.get("objectType"), "bulkUploadResult:objectType", 128) or "KalturaBulkUploadResultEntry"
    if not cls.startswith("KalturaBulkUploadResult"):
        raise KalturaError("INVALID_OBJECT_TYPE", f'Invalid object type "{cls[:60]}": use KalturaBulkUploadResult '
                                                  "or one of its subclasses")
    r = Result()
    r.record_index = integer(obj.get("lineIndex"), "bulkUploadResult:lineIndex", 1, MAX_RECORDS - 1) or 0
    if not r.record_index:
        raise KalturaError("MISSING_MANDATORY_PARAMETER", 'Missing parameter "bulkUploadResult:lineIndex"')
    status = text(obj.get("status"), "bulkUploadResult:status", 8) or ""
    if status not in RESULT_STATUS_IN:
        raise KalturaError("INVALID_ENUM_VALUE", f'Invalid enumeration value "{status[:8]}" for parameter '
                                                 '"bulkUploadResult:status", expecting enumeration type '
                                                 '"KalturaBulkUploadResultStatus" (1 ERROR, 2 OK, 3 IN_PROGRESS)')
    r.status = RESULT_STATUS_IN[status]  # type: ignore[assignment]
    action = integer(obj.get("action"), "bulkUploadResult:action", 0, 1000) or Result.ADD
    if action not in Result.Action.values():
        raise KalturaError("INVALID_ENUM_VALUE", f'Invalid enumeration value "{action}" for parameter '
                                                 '"bulkUploadResult:action": use 1 ADD, 2 UPDATE, 3 DELETE, '
                                                 "4 REPLACE or 6 ADD_OR_UPDATE")
    r.action = action  # type: ignore[assignment]
    object_type = integer(obj.get("bulkUploadResultObjectType"), "bulkUploadResult:bulkUploadResultObjectType",
                          0, 100)
    if object_type is not None:
        if object_type not in BulkUpload.ObjectType.values():
            raise KalturaError("INVALID_ENUM_VALUE", f'Invalid enumeration value "{object_type}" for parameter '
                                                     '"bulkUploadResult:bulkUploadResultObjectType"')
        r.object_type = object_type  # type: ignore[assignment]
    r.object_id = text(obj.get("objectId"), "bulkUploadResult:objectId", 256) or ""
    object_status = integer(obj.get("objectStatus"), "bulkUploadResult:objectStatus", -100, 100)
    if object_status is not None:
        r.object_state = ENTRY_STATE.get(object_status, str(object_status))
    r.row_data = text(obj.get("rowData"), "bulkUploadResult:rowData", 65536) or ""
    r.partner_data = text(obj.get("partnerData"), "bulkUploadResult:partnerData", 4096) or ""
    r.object_error = text(obj.get("objectErrorDescription"), "bulkUploadResult:objectErrorDescription", 4096) or ""
    description = text(obj.get("errorDescription"), "bulkUploadResult:errorDescription", 4096) or ""
    code = text(obj.get("errorCode"), "bulkUploadResult:errorCode", 63) or ""
    if description or code:
        from google.rpc import code_pb2, error_details_pb2

        r.error.code = code_pb2.INVALID_ARGUMENT if r.status == Result.ERROR else code_pb2.UNKNOWN
        r.error.message = description
        if code:
            r.error.details.add().Pack(error_details_pb2.ErrorInfo(reason=code, domain="kaltura"))
    error_type = integer(obj.get("errorType"), "bulkUploadResult:errorType", 0, 100)
    if error_type is not None:
        r.error_type = ERROR_TYPE_IN.get(error_type, Result.INTERNAL)  # type: ignore[assignment]
    for i, item in enumerate(items(obj.get("pluginsData"), "bulkUploadResult:pluginsData", 64) + plugin_data):
        if not isinstance(item, dict):
            raise KalturaError("INVALID_PARAMETER", f"pluginsData item {i} must be a KalturaBulkUploadPluginData")
        name = text(item.get("field"), "pluginsData:field", 128)
        if name:
            r.plugins_data[name] = text(item.get("value"), "pluginsData:value", 1024) or ""
    dropped = [f for f in SSH_FIELDS if obj.get(f) not in (None, "")]
    if cls == "KalturaBulkUploadResultEntry" or cls == "KalturaBulkUploadResult":
        for kaltura, field in _ENTRY_FIELDS.items():
            value = text(obj.get(kaltura), f"bulkUploadResult:{kaltura}", 4096)
            if value:
                setattr(r.entry, field, value)
        r.entry.thumbnail_saved = bool(boolean(obj.get("thumbnailSaved"), "bulkUploadResult:thumbnailSaved"))
        r.title = r.entry.title
        r.reference_id = r.entry.reference_id
        if cls != "KalturaBulkUploadResult":
            r.kaltura_object_type = cls
    else:
        r.kaltura_object_type = cls
        for name, value in obj.items():  # the user/category/... fields: the API checks the names
            if name not in _COMMON_RESULT_FIELDS:
                got = text(value, f"bulkUploadResult:{name}", 1024)
                if got:
                    r.external_fields[name] = got
    return r, dropped


# -- media info --------------------------------------------------------------------------

# Kaltura name -> (MediaInfo field, kind). Kaltura's units are mediajobs'
# (ms, kbit/s) except fileSize, which Kaltura keeps in KB.
_MEDIA_INFO = {
    "containerFormat": ("container_format", "s"), "containerId": ("container_id", "s"),
    "containerProfile": ("container_profile", "s"), "containerDuration": ("container_duration_ms", "i"),
    "containerBitRate": ("container_bit_rate_kbps", "i"), "videoFormat": ("video_format", "s"),
    "videoCodecId": ("video_codec_id", "s"), "videoDuration": ("video_duration_ms", "i"),
    "videoBitRate": ("video_bit_rate_kbps", "i"), "videoBitRateMode": ("video_bit_rate_mode", "mode"),
    "videoWidth": ("video_width", "i32"), "videoHeight": ("video_height", "i32"),
    "videoFrameRate": ("video_frame_rate", "f"), "videoDar": ("video_dar", "f"),
    "videoRotation": ("video_rotation", "i32"), "audioFormat": ("audio_format", "s"),
    "audioCodecId": ("audio_codec_id", "s"), "audioDuration": ("audio_duration_ms", "i"),
    "audioBitRate": ("audio_bit_rate_kbps", "i"), "audioBitRateMode": ("audio_bit_rate_mode", "mode"),
    "audioChannels": ("audio_channels", "i32"), "audioSamplingRate": ("audio_sampling_rate", "i32"),
    "audioResolution": ("audio_resolution", "i32"), "writingLib": ("writing_lib", "s"),
    "rawData": ("raw_data", "s"), "multiStreamInfo": ("multi_stream_info", "s"),
    "multiStream": ("multi_stream", "b"), "isFastStart": ("is_fast_start", "b"),
    "contentStreams": ("content_streams", "s"), "complexityValue": ("complexity_value", "i32"),
    "maxGOP": ("max_gop", "gop"),
}
KALTURA_SCAN_TYPE = {0: mres.SCAN_TYPE_PROGRESSIVE, 1: mres.SCAN_TYPE_INTERLACED}


def media_info_from_kaltura(obj: dict[str, Any]) -> mres.MediaInfo:
    mi = mres.MediaInfo()
    ref = text(obj.get("flavorAssetId"), "mediaInfo:flavorAssetId", 128) or ""
    entry_id = text(obj.get("entryId"), "mediaInfo:entryId", 64) or ""
    if entry_id:  # mediajobs' own spelling: the entry, and a plain flavor asset id
        mi.entry_id, mi.flavor_asset_id = entry_id.upper(), ref.upper()
    elif ref:
        mi.entry_id, mi.flavor_asset_id = split_flavor_asset_ref(ref)
    else:
        raise KalturaError("MISSING_MANDATORY_PARAMETER", 'Missing parameter "mediaInfo:flavorAssetId" '
                                                          '("<entry id>" or "<entry id>_<flavor asset id>")')
    size_kb = integer(obj.get("fileSize"), "mediaInfo:fileSize", 0, 2**43)
    if size_kb is not None:
        mi.file_size_bytes = size_kb * 1024
    for kaltura, (field, kind) in _MEDIA_INFO.items():
        name, value = f"mediaInfo:{kaltura}", obj.get(kaltura)
        if kind == "s":
            got: Any = text(value, name, 65536 if kaltura == "rawData" else 8192)
        elif kind == "i":
            got = integer(value, name, 0, 2**53)
        elif kind == "i32":
            got = integer(value, name, -(2**31), 2**31 - 1)
        elif kind == "f":
            got = number(value, name)
        elif kind == "b":
            got = boolean(value, name)
        elif kind == "gop":
            f = number(value, name)
            got = None if f is None else int(round(min(max(f, 0), 2**31 - 1)))
        else:  # KalturaBitRateMode: CBR 1, VBR 2 (the proto's numbers)
            got = integer(value, name, 0, 2)
        if got is not None:
            setattr(mi, field, got)
    scan = integer(obj.get("scanType"), "mediaInfo:scanType", 0, 1)
    if scan is not None:
        mi.scan_type = KALTURA_SCAN_TYPE[scan]
    return mi


def media_info(mi: mres.MediaInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"objectType": "KalturaMediaInfo", "id": ulid_to_int(mi.id),
                           "flavorAssetId": flavor_asset_ref(mi.entry_id, mi.flavor_asset_id),
                           "fileSize": round(mi.file_size_bytes / 1024) if mi.file_size_bytes else None}
    for kaltura, (field, kind) in _MEDIA_INFO.items():
        value = getattr(mi, field)
        if kind == "b":
            out[kaltura] = 1 if value else 0
        else:
            out[kaltura] = _or_none(value)
    scan = {v: k for k, v in KALTURA_SCAN_TYPE.items()}.get(mi.scan_type)
    out["scanType"] = scan
    out["createdAt"] = _seconds(mi.create_time)
    return out


# -- jobs --------------------------------------------------------------------------------


def kaltura_job_type(job_type: str) -> str:
    return KALTURA_JOB_TYPE.get(job_type, job_type)


def job_type_from_kaltura(value: str) -> str:
    return JOB_TYPES.get(value.strip(), value.strip())


def _int_or_none(value: str) -> int | None:
    return int(value) if re.fullmatch(r"-?\d{1,9}", value or "") else None


def batch_job(job: Job, partner_id: int) -> dict[str, Any]:
    lock = job.lease.lock_key
    return {
        "objectType": "KalturaBatchJob",
        "id": ulid_to_int(job.id),
        "partnerId": partner_id,
        "createdAt": _seconds(job.create_time),
        "updatedAt": _seconds(job.update_time),
        "lockExpiration": _seconds(job.lease.expire_time),
        "executionAttempts": job.attempt_count,
        "entryId": job.metadata.get("entry_id") or None,
        "jobType": kaltura_job_type(job.type),
        "status": JOB_STATUS.get(job.state, BATCH_PENDING),
        "abort": 1 if job.state == Job.ABORTING else 0,
        "message": (job.error.message if job.HasField("error") else job.progress_message) or None,
        "description": job.abort_reason or None,
        "priority": int(job.priority),
        "queueTime": _seconds(job.available_time) or _seconds(job.create_time),
        "finishTime": _seconds(job.end_time),
        "errType": 1 if job.HasField("error") else None,
        "errNumber": job.error.code if job.HasField("error") else None,
        "schedulerId": _int_or_none(lock.scheduler_id),
        "workerId": _int_or_none(lock.worker_id),
        "batchIndex": lock.batch_index if job.HasField("lease") else None,
    }


# -- cue points --------------------------------------------------------------------------


def cue_point(c: mres.CuePoint, partner_id: int) -> dict[str, Any]:
    cls, kaltura_type = CUE_POINT_TYPES.get(c.type, ("KalturaCuePoint", ""))
    out: dict[str, Any] = {
        "objectType": cls, "id": c.id, "cuePointType": kaltura_type or None, "status": 1, "entryId": c.entry_id,
        "partnerId": partner_id, "createdAt": _seconds(c.create_time), "updatedAt": _seconds(c.create_time),
        "tags": ",".join(c.tags) or None, "startTime": c.start_time_ms, "partnerData": c.partner_data or None,
        "systemName": c.system_name or None,
    }
    span = {"endTime": c.end_time_ms or None,
            "duration": (c.end_time_ms - c.start_time_ms) if c.end_time_ms else None}
    if c.type == mres.CuePoint.ANNOTATION:
        out.update(text=c.text or None, **span)
    elif c.type == mres.CuePoint.AD:
        out.update(sourceUrl=c.source_url or None, adType=AD_TYPES.get(c.sub_type.upper()), title=c.title or None,
                   **span)
    elif c.type == mres.CuePoint.CODE:
        out.update(code=c.code or None, description=c.description or None, **span)
    elif c.type == mres.CuePoint.THUMB:
        out.update(title=c.title or None, description=c.description or None,
                   subType=THUMB_SUB_TYPES.get(c.sub_type.upper()))
    elif c.type == mres.CuePoint.EVENT:
        out.update(eventType=EVENT_TYPES.get(c.sub_type.upper()))
    return out
