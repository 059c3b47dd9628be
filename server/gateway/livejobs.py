"""The live-jobs REST API (seed `004_4b8e4839eb64b2f4.txt`) over LiveJobService.

Routes, all under `/api/v{version}/projects/{projectId}/livejobs` (version `1`;
`1.0` is the same version, anything else is UNSUPPORTED_API_VERSION):

    GET  .../livejobs                    ListLiveJobs        search, pageIndex, pageSize
    POST .../livejobs                    CreateLiveJob       201
    GET  .../livejobs/outputs            ListLiveOutputs     liveJobId (required), pageIndex, pageSize
    POST .../livejobs/{streamKey}        SetLiveEncoding     {online, startDateTime, finishDateTime}, 201
    GET  .../livejobs/{id}               GetLiveJob
    GET  .../livejobs/{id}/timings       ListLiveTimings     outputId, pageIndex, pageSize
    GET  .../livejobs/{id}/stats         GetLiveStatistics   (a list of one, as the seed shows it)

The seed defines no delete and no stream-key reset; mediajobs' own REST API
has them (`DELETE /v1/liveJobs/{id}`, `POST /v1/liveJobs/{id}:resetStreamKey`).

Every answer is the seed's envelope:

    {"success": true, "errors": [], "messages": [], "result": ..., "resultInfo": {...}}
    {"success": false, "errors": [{"code": "LIVE_JOB_NOT_FOUND", "message": "..."}], "messages": [],
     "result": null, "resultInfo": null}

with the HTTP status of the gRPC outcome (errors.HTTP_STATUS: 400, 401, 403,
404, 409, 429 with Retry-After, ...). An error's `code` is the ErrorInfo
reason the server sent (LIVE_JOB_NOT_FOUND, DESTINATION_IN_USE, ...) or the
gateway's own (PROJECT_NOT_FOUND, INVALID_REQUEST, UNSUPPORTED_API_VERSION,
...); a bad field is one error per field, named as the seed names it
(`input.serverType`, `pageSize`). The gateway's own 404/405/413/500 under
`/api/` take the same form. `resultInfo` of a list is the server's PageInfo
(offset pages: `pageIndex` is 1-based, default 1); a single result has the
resultInfo of a page of one.

Credentials. The seed only says "Headers: Authorization". Here that header
carries a mediajobs API key, `Authorization: Bearer mjk_...` (a bare
`Authorization: mjk_...` is taken too), passed on as the gRPC call's
`authorization: Bearer <key>`; the server checks it, so the key's role
holds (a viewer lists and reads, with stream keys blanked; an editor also
creates and starts/stops). No header on a server with `--auth none` is the
home project's anonymous caller.

Projects. The seed's `{projectId}` (a GUID there) is the mediajobs project
name (`default` is the home project). The server runs every call in its
key's project and shows nothing of another, so the gateway's only job is
to refuse a path naming a project that is not the key's: such a path
answers exactly as a project that does not exist, 404 PROJECT_NOT_FOUND.
The gateway asks the server which project the key works in
(AdminService.GetCaller, which any role may call) before each operation.

Field mapping (seed -> LiveJob): integer `id` = `number`; `name` = `name`
(UUID); `key` = `stream_key` (null where the key is hidden: viewers);
`status` = the state, as an integer (LiveJob.State) in a live job and as
its PascalCase name ("Live", "AwaitingInput") in list items and timings,
as the seed's examples show; `projectId` = `project`; `insertDate` =
`create_time`; `startDateTime`/`endDateTime` = `start_time`/`end_time`;
`filePath` = `input.file_path`; `jobTemplateId` = `job_template_id` (a
string; 0 or absent is the default live template); `argoResourceName` =
`current_job_id` (the session's LIVE_ENCODE job); `resourceName` =
`resource_name` (the worker); `storageMasterFile` and `outputManifests`
are URLs when the server has `--live-playback-base-url`, else paths under
the storage root; `tags` = `labels`; `serverType`/`inputClass` are
LiveInput's enum numbers (1 RTMP, 2 SRT, 3 HLS; 1 Single, 2 Standard; names
are taken on input too), listed with their ids in `serverTypeOptions`/
`inputClassOptions`; statistics are rounded to the seed's integers. An
output's `liveJobId` is the live job's integer id, `status` LiveOutput.Status
(1 waiting, 2 encoding, 3 stopped, 4 failed), `lockKey` the lease lock key
(`scheduler/worker/slot`) and `encoderId` the worker's identity (strings: the
seed's GUID and integer have no counterpart). A live job in a path is its
name (GUID, as the seed documents), its integer id (looked up among the
project's 2,000 newest live jobs) or its mediajobs id (ULID).

POST encoding: `online` is required; `startDateTime`/`finishDateTime` schedule
the session (start no earlier than, stop by itself at); with `online: false`
they are ignored (the seed marks them mandatory, so clients send them with
a stop too), as is .NET's DateTime.MinValue (`0001-01-01T00:00:00`). Dates
without an offset are UTC. Request JSON property names and query parameter
names are matched case-insensitively, as ASP.NET does; unknown ones are
refused. `Idempotency-Key` (1-128 characters) on a POST is its request_id.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf import timestamp_pb2

from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_resources_pb2 as lres

from .app import ERROR_FORMS_KEY
from .errors import code_of, details_of, http_status, status_of
from .routes import CALL_TIMEOUT_S, MAX_IDEMPOTENCY_KEY
from .upstream import Upstream

LiveJob = lres.LiveJob
LiveInput = lres.LiveInput

PATH_PREFIX = "/api/"
BASE = "/api/v{version}/projects/{projectId}/livejobs"
API_VERSIONS = ("1", "1.0")
MAX_BODY_BYTES = 64 * 1024
MAX_AUTHORIZATION_CHARS = 4096
# An integer id is found by paging through the project's live jobs, newest
# first: at most this many pages of MAX_PAGE.
MAX_PAGE = 100
MAX_NUMBER_SCAN_PAGES = 20
INT32_MAX = 2**31 - 1
# mediajobs project names: DNS labels (AdminService); anything else cannot exist.
PROJECT_NAME = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
INTEGER_ID = re.compile(r"[0-9]{1,18}")

# Request fields in the server's violations -> the seed's names (longest prefix wins).
SEED_FIELDS = {
    "live_job.job_template_id": "jobTemplateId",
    "live_job.destination": "destination",
    "live_job.description": "description",
    "live_job.bucket": "bucket",
    "live_job.cdn_distribution": "cdnDistribution",
    "live_job.input.file_path": "input.filePath",
    "live_job.input.server_type": "input.serverType",
    "live_job.input.input_class": "input.inputClass",
    "live_job.input.callback_url": "input.callbackUrl",
    "live_job.input": "input",
    "live_job.labels": "tags",
    "live_job": "body",
    "search": "search",
    "page_size": "pageSize",
    "page_index": "pageIndex",
    "page_token": "pageIndex",
    "stream_key": "streamKey",
    "start_time": "startDateTime",
    "finish_time": "finishDateTime",
    "output_id": "outputId",
    "live_job_id": "id",
    "id": "id",
    "request_id": "Idempotency-Key",
}


# -- the envelope -------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success: HTTP status and the envelope's errors."""

    def __init__(self, http: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0]["message"] if errors else str(http))
        self.http = http
        self.errors = errors
        self.headers = headers or {}


def error(http: int, code: str, message: str) -> ApiError:
    return ApiError(http, [{"code": code, "message": message}])


def bad_request(message: str, code: str = "INVALID_REQUEST") -> ApiError:
    return error(400, code, message)


def project_not_found(project_id: str) -> ApiError:
    return error(404, "PROJECT_NOT_FOUND", f"project {_clip(project_id)} does not exist")


def envelope(result: Any, result_info: dict[str, Any] | None, http: int = 200) -> web.Response:
    body = {"success": True, "errors": [], "messages": [], "result": result, "resultInfo": result_info}
    return web.Response(status=http, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def failure(e: ApiError) -> web.Response:
    body = {"success": False, "errors": e.errors, "messages": [], "result": None, "resultInfo": None}
    headers = dict(e.headers)
    if e.http == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="mediajobs"')
    return web.Response(status=e.http, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


def gateway_error_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
                       ) -> web.StreamResponse:
    """The gateway's own errors under /api/ (no route, a wrong method, a body
    too large, a bug) in the envelope."""
    e = error(http, reason, message)
    if http == 405:
        e.headers["Allow"] = message.rpartition("allowed: ")[2]
    return failure(e)


def from_grpc(e: grpc.aio.AioRpcError) -> ApiError:
    """A failed call as the envelope's errors: the ErrorInfo reason as the
    code, a bad field as one error each (with the seed's field name)."""
    st = status_of(e)
    rich = details_of(st)
    errors = [{"code": "", "message": f"{seed_field(v.field)}: {v.description}"} for v in rich.violations]
    headers = {"Retry-After": rich.retry_after} if rich.retry_after_s is not None else {}
    code = rich.reason or code_of(st.code).name
    if not errors:
        errors = [{"code": code, "message": st.message}]
    for item in errors:
        item["code"] = code
    return ApiError(http_status(st.code), errors, headers)


def seed_field(proto_field: str) -> str:
    for prefix in sorted(SEED_FIELDS, key=len, reverse=True):
        if proto_field == prefix or proto_field.startswith(prefix + ".") or proto_field.startswith(prefix + "["):
            return SEED_FIELDS[prefix] + proto_field[len(prefix):]
    return proto_field


def _clip(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


# -- seed shapes ----------------------------------------------------------------------------


def page_info(info: lres.PageInfo) -> dict[str, Any]:
    return {"totalCount": info.total_count, "pageIndex": info.page_index, "pageSize": info.page_size,
            "totalPages": info.total_pages, "hasNextPage": info.has_next_page,
            "hasPreviousPage": info.has_previous_page}


ONE_ITEM = {"totalCount": 1, "pageIndex": 1, "pageSize": 1, "totalPages": 1, "hasNextPage": False,
            "hasPreviousPage": False}


def seed_time(ts: timestamp_pb2.Timestamp) -> str | None:
    """RFC 3339 in UTC with milliseconds, as the seed writes dates; null when unset."""
    if not ts.seconds and not ts.nanos:
        return None
    dt = datetime.fromtimestamp(ts.seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts.nanos // 1_000_000:03d}Z"


def state_word(state: int) -> str:
    """LiveJob.State as the seed's status words: AWAITING_INPUT -> AwaitingInput."""
    known = state in LiveJob.State.values()
    name = LiveJob.State.Name(LiveJob.State.ValueType(state)) if known else "STATE_UNSPECIFIED"
    return "".join(part.capitalize() for part in name.split("_"))


def _playback_prefix(lj: LiveJob) -> str:
    """What the server puts before a path under the storage root to make a
    playback URL (from `playback_url`, which is that prefix + the master
    playlist's path); "" without --live-playback-base-url."""
    if lj.playback_url and lj.playback_url.endswith(lj.storage_master_file):
        return lj.playback_url[:len(lj.playback_url) - len(lj.storage_master_file)]
    return ""


def statistics_shape(s: lres.LiveStatistics) -> dict[str, Any]:
    return {"width": s.width, "height": s.height, "framerate": round(s.frame_rate),
            "videoDataRate": round(s.video_data_rate), "videoCodecId": s.video_codec_id,
            "audioDataRate": round(s.audio_data_rate), "audioSampleRate": s.audio_sample_rate,
            "audioSampleSize": s.audio_sample_size, "audioCodecId": s.audio_codec_id,
            "audioChannels": s.audio_channels, "stereo": s.stereo, "encoder": s.encoder}


def _options(options: Any) -> list[dict[str, Any]]:
    return [{"id": o.id, "value": o.value, "enabled": o.enabled} for o in options]


def live_job_shape(lj: LiveJob) -> dict[str, Any]:
    """A live job as the seed's POST live job and GET live job return it."""
    prefix = _playback_prefix(lj)
    return {
        "name": lj.name,
        "key": lj.stream_key or None,
        "destination": lj.destination,
        "description": lj.description,
        "projectId": lj.project,
        "status": int(lj.state),
        "startDateTime": seed_time(lj.start_time),
        "endDateTime": seed_time(lj.end_time),
        "jobTemplateId": lj.job_template_id,
        "argoResourceName": lj.current_job_id,
        "resourceName": lj.resource_name,
        "bucket": lj.bucket,
        "cdnDistribution": lj.cdn_distribution,
        "rtmpServer": lj.rtmp_server,
        "webSocketConnection": lj.web_socket_connection,
        "cdn": lj.cdn,
        "storageMasterFile": lj.playback_url or lj.storage_master_file,
        "outputManifests": {name: prefix + path for name, path in lj.output_manifests.items()},
        "input": {
            "filePath": lj.input.file_path,
            "serverType": int(lj.input.server_type),
            "serverTypeOptions": _options(lj.input.server_type_options),
            "inputClass": int(lj.input.input_class),
            "inputClassOptions": _options(lj.input.input_class_options),
            "callbackUrl": lj.input.callback_url,
        },
        "statistics": statistics_shape(lj.statistics),
        "tags": dict(lj.labels),
    }


def list_item_shape(lj: LiveJob) -> dict[str, Any]:
    """A live job as an item of the seed's GET live jobs."""
    return {"id": lj.number, "name": lj.name, "key": lj.stream_key or None, "status": state_word(lj.state),
            "description": lj.description, "filePath": lj.input.file_path, "insertDate": seed_time(lj.create_time),
            "startDateTime": seed_time(lj.start_time), "endDateTime": seed_time(lj.end_time)}


def output_shape(o: lres.LiveOutput, live_number: int) -> dict[str, Any]:
    return {"liveJobId": live_number, "outputId": o.output_id, "progress": o.progress, "status": int(o.status),
            "lockKey": o.lock_key, "counter": o.counter, "encoderId": o.encoder_id}


def timing_shape(t: lres.LiveTiming) -> dict[str, Any]:
    return {"status": state_word(t.status), "childStatus": t.child_status, "startDateTime": seed_time(t.time),
            "messageComment": t.message_comment}


# -- request input ----------------------------------------------------------------------------


def query_params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, names matched case-insensitively against
    `allowed` (canonical spellings); unknown or repeated ones are refused."""
    canonical = {name.lower(): name for name in allowed}
    out: dict[str, str] = {}
    for raw_name, value in request.query.items():
        name = canonical.get(raw_name.lower())
        if name is None:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            raise bad_request(f"unknown query parameter {_clip(raw_name)}; this call takes {takes}")
        if name in out:
            raise bad_request(f"{name} is given more than once")
        out[name] = value
    return out


def int_param(params: dict[str, str], name: str, low: int, high: int = INT32_MAX) -> int:
    """An integer query parameter in [low, high]; 0 when absent."""
    text = params.get(name, "").strip()
    if not text:
        return 0
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", text) or not low <= int(text) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}, not {_clip(text)}")
    return int(text)


def page_params(params: dict[str, str]) -> tuple[int, int]:
    """(pageIndex, pageSize): the page defaults to the first, the size to the server's."""
    return int_param(params, "pageIndex", 1) or 1, int_param(params, "pageSize", 1, MAX_PAGE)


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise error(413, "BODY_TOO_LARGE", f"the body is larger than {MAX_BODY_BYTES} bytes, the limit")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise error(413, "BODY_TOO_LARGE", f"the body is larger than {MAX_BODY_BYTES} bytes, the limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the request needs a JSON body", "BODY_MISSING")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not JSON: {str(e)[:200]}", "BODY_NOT_JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", "BODY_NOT_JSON")
    return body


def properties(obj: dict[str, Any], allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """A JSON object's properties by their canonical names (matched
    case-insensitively, as ASP.NET does); null is absent; unknown refused."""
    canonical = {name.lower(): name for name in allowed}
    out: dict[str, Any] = {}
    for raw_name, value in obj.items():
        name = canonical.get(str(raw_name).lower())
        if name is None:
            raise bad_request(f"{where}{_clip(str(raw_name))} is not a field here; the fields are "
                              f"{', '.join(where + a for a in allowed)}")
        if name in out:
            raise bad_request(f"{where}{name} is given more than once")
        if value is not None:
            out[name] = value
    return out


def string_field(props: dict[str, Any], name: str, where: str = "") -> str:
    value = props.get(name, "")
    if not isinstance(value, str):
        raise bad_request(f"{where}{name} must be a string")
    return value


def bool_field(props: dict[str, Any], name: str, where: str = "") -> bool:
    value = props.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{where}{name} must be true or false")
    return value


def enum_field(props: dict[str, Any], name: str, enum: Any, where: str) -> int:
    """An enum as its number or its name (any case); 0/absent is unset."""
    value = props.get(name, 0)
    choices = ", ".join(f"{v} ({n})" for n, v in enum.items() if v)
    if isinstance(value, str) and value.upper() in enum.keys() and enum.Value(value.upper()):
        return int(enum.Value(value.upper()))
    if isinstance(value, int) and not isinstance(value, bool) and (value == 0 or value in enum.values()):
        return value
    raise bad_request(f"{where}{name} must be one of {choices}, not {_clip(json.dumps(value))}")


def date_field(props: dict[str, Any], name: str) -> timestamp_pb2.Timestamp | None:
    """An ISO 8601 date (UTC without an offset); None when absent or .NET's
    DateTime.MinValue."""
    value = props.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise bad_request(f"{name} must be an ISO 8601 date such as 2022-01-28T23:33:39.961Z")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date such as 2022-01-28T23:33:39.961Z, not "
                          f"{_clip(value)}") from None
    if dt.year <= 1:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds((dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _MICROSECOND)
    return ts


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)

CREATE_FIELDS = ("jobTemplateId", "destination", "description", "bucket", "cdnDistribution", "input", "tags",
                 "filePath", "serverType", "inputClass", "callbackUrl")
INPUT_FIELDS = ("filePath", "serverType", "inputClass", "callbackUrl")
ENCODING_FIELDS = ("online", "startDateTime", "finishDateTime")


def create_request(body: dict[str, Any]) -> lsvc.CreateLiveJobRequest:
    """The seed's POST live job body as a CreateLiveJobRequest. The input's
    fields come nested (`input: {...}`, as the seed's example) or at the top
    level (as the seed's parameter list has them), not both."""
    props = properties(body, CREATE_FIELDS, "")
    flat = {k: props.pop(k) for k in INPUT_FIELDS if k in props}
    nested = props.pop("input", {})
    if not isinstance(nested, dict):
        raise bad_request("input must be a JSON object: {filePath, serverType, inputClass, callbackUrl}")
    inp = properties(nested, INPUT_FIELDS, "input.")
    both = sorted(set(flat) & set(inp))
    if both:
        raise bad_request(f"{', '.join(both)} given both at the top level and in input; give each once")
    inp.update(flat)
    template = props.get("jobTemplateId", "")
    if isinstance(template, int) and not isinstance(template, bool) and template >= 0:
        template = str(template) if template else ""  # the seed's integer ids; 0 is "the default"
    if not isinstance(template, str):
        raise bad_request("jobTemplateId must be a live template's id (a string; absent: hls-live-360p-240p)")
    tags = props.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise bad_request("tags must be a JSON object of strings")
    live_job = LiveJob(
        job_template_id=template,
        destination=string_field(props, "destination"),
        description=string_field(props, "description"),
        bucket=string_field(props, "bucket"),
        cdn_distribution=bool_field(props, "cdnDistribution"),
        labels=tags,
        input=LiveInput(
            file_path=string_field(inp, "filePath", "input."),
            server_type=LiveInput.ServerType.ValueType(enum_field(inp, "serverType", LiveInput.ServerType, "input.")),
            input_class=LiveInput.InputClass.ValueType(enum_field(inp, "inputClass", LiveInput.InputClass, "input.")),
            callback_url=string_field(inp, "callbackUrl", "input."),
        ),
    )
    return lsvc.CreateLiveJobRequest(live_job=live_job)


def encoding_request(stream_key: str, body: dict[str, Any]) -> lsvc.SetLiveEncodingRequest:
    props = properties(body, ENCODING_FIELDS, "")
    if "online" not in props:
        raise bad_request("online is required: true starts encoding, false stops it")
    req = lsvc.SetLiveEncodingRequest(stream_key=stream_key, online=bool_field(props, "online"))
    start, finish = date_field(props, "startDateTime"), date_field(props, "finishDateTime")
    if req.online:  # a stop takes no window: the seed's clients send one anyway
        if start is not None:
            req.start_time.CopyFrom(start)
        if finish is not None:
            req.finish_time.CopyFrom(finish)
    return req


def idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise bad_request(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    return key


def call_metadata(request: web.Request) -> list[tuple[str, str]]:
    """`Authorization: Bearer <mediajobs API key>` (or the bare key) as the
    gRPC call's credentials."""
    header = request.headers.get("Authorization", "").strip()
    if not header or len(header) > MAX_AUTHORIZATION_CHARS:
        return []
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer":
        return [("authorization", "Bearer " + rest.strip())]
    if header.startswith("mjk_") and not rest:
        return [("authorization", "Bearer " + header)]
    return [("authorization", header)]  # another scheme: the server says what it wants


# -- the routes ---------------------------------------------------------------------------------


@dataclass
class Call:
    """One HTTP request's calls of the gRPC API, with its credentials."""

    metadata: list[tuple[str, str]]

    async def __call__(self, method: Any, req: Any) -> Any:
        try:
            return await method(req, metadata=self.metadata, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise from_grpc(e) from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def seed_route(fn: Callable[["LiveJobsApi", web.Request, Call, str], Awaitable[web.StreamResponse]]
               ) -> Callable[["LiveJobsApi", web.Request], Awaitable[web.StreamResponse]]:
    """Checks the version and the project id's form, and answers ApiError in
    the envelope; `fn` gets the call context and the project id."""

    async def handle(self: "LiveJobsApi", request: web.Request) -> web.StreamResponse:
        try:
            version = request.match_info["version"]
            if version not in API_VERSIONS:
                raise bad_request(f"API version {_clip(version)} is not supported; this server has version 1 "
                                  "(/api/v1/...)", "UNSUPPORTED_API_VERSION")
            project_id = request.match_info["projectId"].lower()
            if not PROJECT_NAME.fullmatch(project_id):
                raise project_not_found(request.match_info["projectId"])  # no project can have that name
            return await fn(self, request, Call(call_metadata(request)), project_id)
        except ApiError as e:
            return failure(e)

    return handle


class LiveJobsApi:
    def __init__(self, upstream: Upstream) -> None:
        self.live = upstream.stubs["LiveJobService"]
        self.jobs = upstream.stubs["JobService"]
        self.admin = upstream.stubs["AdminService"]

    # -- the key's project ----------------------------------------------------------------

    async def check_project(self, call: Call, project_id: str) -> None:
        """PROJECT_NOT_FOUND unless `project_id` is the project the caller's
        key works in (AdminService.GetCaller; any role may ask)."""
        who = await call(self.admin.GetCaller, asvc.GetCallerRequest())
        if who.project != project_id:
            raise project_not_found(project_id)

    async def find_live_job(self, call: Call, project_id: str, ref: str) -> LiveJob:
        """The live job `ref` names (name, ULID or integer id) in the path's
        project; PROJECT_NOT_FOUND when that is not the key's project."""
        try:
            if INTEGER_ID.fullmatch(ref):
                live = await self._by_number(call, int(ref))
            else:
                live = await call(self.live.GetLiveJob, lsvc.GetLiveJobRequest(id=ref))
        except ApiError as e:
            if e.http == 404:
                await self.check_project(call, project_id)  # another project's path: that comes first
            raise
        if live.project != project_id:
            raise project_not_found(project_id)
        return live

    async def _by_number(self, call: Call, number: int) -> LiveJob:
        token = ""
        for _ in range(MAX_NUMBER_SCAN_PAGES):
            page = await call(self.live.ListLiveJobs, lsvc.ListLiveJobsRequest(page_size=MAX_PAGE, page_token=token))
            found = next((lj for lj in page.live_jobs if lj.number == number), None)
            if found is not None:
                return await call(self.live.GetLiveJob, lsvc.GetLiveJobRequest(id=found.id))  # with its key
            token = page.next_page_token
            if not token:
                break
        raise error(404, "LIVE_JOB_NOT_FOUND",
                    f"no live job has id {number} (integer ids are looked up among the project's "
                    f"{MAX_PAGE * MAX_NUMBER_SCAN_PAGES} newest live jobs; older ones by their name)")

    # -- operations -------------------------------------------------------------------------

    @seed_route
    async def list_live_jobs(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        params = query_params(request, ("search", "pageIndex", "pageSize"))
        page_index, page_size = page_params(params)
        req = lsvc.ListLiveJobsRequest(search=params.get("search", ""), page_index=page_index, page_size=page_size,
                                       include_stream_key=True)  # the seed lists keys (blanked for viewers)
        await self.check_project(call, project_id)
        page = await call(self.live.ListLiveJobs, req)
        return envelope([list_item_shape(lj) for lj in page.live_jobs], page_info(page.page_info))

    @seed_route
    async def create_live_job(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        query_params(request, ())
        req = create_request(await json_object(request))
        req.request_id = idempotency_key(request)
        await self.check_project(call, project_id)
        live = await call(self.live.CreateLiveJob, req)
        return envelope(live_job_shape(live), ONE_ITEM, http=201)

    @seed_route
    async def list_outputs(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        params = query_params(request, ("liveJobId", "pageIndex", "pageSize"))
        ref = params.get("liveJobId", "").strip()
        if not ref:
            raise bad_request("liveJobId is required: the live job's id (an integer) or name (a GUID)")
        page_index, page_size = page_params(params)
        live = await self.find_live_job(call, project_id, ref)
        page = await call(self.live.ListLiveOutputs, lsvc.ListLiveOutputsRequest(
            live_job_id=live.id, page_index=page_index, page_size=page_size))
        return envelope([output_shape(o, live.number) for o in page.outputs], page_info(page.page_info))

    @seed_route
    async def set_encoding(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        query_params(request, ())
        req = encoding_request(request.match_info["ref"], await json_object(request))
        req.request_id = idempotency_key(request)
        await self.check_project(call, project_id)  # before the call: starting or stopping is not undone
        resp = await call(self.live.SetLiveEncoding, req)
        return envelope({"online": resp.online, "playBackPathURL": resp.playback_path_url}, ONE_ITEM, http=201)

    @seed_route
    async def get_live_job(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        query_params(request, ())
        live = await self.find_live_job(call, project_id, request.match_info["ref"])
        return envelope(live_job_shape(live), ONE_ITEM)

    @seed_route
    async def list_timings(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        params = query_params(request, ("outputId", "pageIndex", "pageSize"))
        output_id = int_param(params, "outputId", 0)
        page_index, page_size = page_params(params)
        live = await self.find_live_job(call, project_id, request.match_info["ref"])
        page = await call(self.live.ListLiveTimings, lsvc.ListLiveTimingsRequest(
            live_job_id=live.id, output_id=output_id, page_index=page_index, page_size=page_size))
        return envelope([timing_shape(t) for t in page.timings], page_info(page.page_info))

    @seed_route
    async def get_statistics(self, request: web.Request, call: Call, project_id: str) -> web.StreamResponse:
        query_params(request, ())
        live = await self.find_live_job(call, project_id, request.match_info["ref"])
        stats = await call(self.live.GetLiveStatistics, lsvc.GetLiveStatisticsRequest(live_job_id=live.id))
        return envelope([statistics_shape(stats)], ONE_ITEM)


def add_routes(app: web.Application, upstream: Upstream) -> None:
    app[ERROR_FORMS_KEY][PATH_PREFIX] = gateway_error_form
    api = LiveJobsApi(upstream)
    r = app.router
    # `outputs` before `{ref}`: the first route whose path matches is taken.
    r.add_get(BASE, api.list_live_jobs)
    r.add_post(BASE, api.create_live_job)
    r.add_get(BASE + "/outputs", api.list_outputs)
    r.add_get(BASE + "/{ref}", api.get_live_job)
    r.add_post(BASE + "/{ref}", api.set_encoding)
    r.add_get(BASE + "/{ref}/timings", api.list_timings)
    r.add_get(BASE + "/{ref}/stats", api.get_statistics)
